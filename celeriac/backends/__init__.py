"""Result backends by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ImproperlyConfigured
from .base import ResultBackend


def backend_from_url(url: str, **options: Any) -> ResultBackend:
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    if scheme in ("memory", "cache+memory"):
        from .memory import MemoryBackend
        return MemoryBackend(url, **options)
    if scheme in ("sqlite", "db+sqlite", "sqla+sqlite"):
        from .sqlite import SQLiteBackend
        return SQLiteBackend(url, **options)
    if scheme in ("redis", "rediss", "unix", "sentinel", "redis+socket"):
        try:
            from .redis import RedisBackend  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"Result backend {url!r} needs the redis client: pip install 'celeriac[redis]' ({exc})"
            ) from exc
        return RedisBackend(url, **options)
    raise ImproperlyConfigured(
        f"Unsupported result backend {url!r}: use sqlite:///file.db, redis://host:port/db or memory://"
    )


__all__ = ["ResultBackend", "backend_from_url"]
