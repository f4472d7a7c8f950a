"""Brokers by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ImproperlyConfigured
from .base import Broker, Capabilities, DeadLetter, Delivery, PublishItem, QueueStats


def broker_from_url(url: str, **options: Any) -> Broker:
    """Build the broker a URL names; ImproperlyConfigured for unknown or malformed URLs."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryBroker
        return MemoryBroker(url, **options)
    if scheme in ("sqlite", "sqla+sqlite", "db+sqlite"):
        from .sqlite import SQLiteBroker
        return SQLiteBroker(url, **options)
    if scheme in ("redis", "rediss", "unix", "sentinel", "redis+socket"):
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"Broker URL {url!r} needs the redis client: pip install 'celeriac[redis]' ({exc})"
            ) from exc
        return RedisBroker(url, **options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        try:
            from .amqp import AMQPBroker  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImproperlyConfigured(f"Broker URL {url!r}: the AMQP broker is not available ({exc})") from exc
        return AMQPBroker(url, **options)
    raise ImproperlyConfigured(
        f"Unsupported broker URL {url!r}: use sqlite:///file.db, redis://host:port/db, "
        "amqp://user:pass@host:port/vhost or memory://"
    )


__all__ = ["Broker", "Capabilities", "DeadLetter", "Delivery", "PublishItem", "QueueStats", "broker_from_url"]
