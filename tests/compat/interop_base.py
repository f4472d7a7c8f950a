"""What both interop task modules share: the app, built with Celery or celeriac.

``INTEROP_IMPL=celery`` imports Celery, anything else celeriac.  ``INTEROP_BROKER`` (Redis
URL, also the result backend), ``INTEROP_PREFIX`` (the ``global_keyprefix`` for broker and
results), ``INTEROP_QUEUE``.  Imported by both interpreters (ours and the Celery venv's).
"""

from __future__ import annotations

import os
from typing import Any

IMPL = os.environ.get("INTEROP_IMPL", "celeriac")
BROKER = os.environ.get("INTEROP_BROKER", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("INTEROP_PREFIX", "interop:")
QUEUE = os.environ.get("INTEROP_QUEUE", "celery")

if IMPL == "celery":
    from celery import Celery
else:
    from celeriac import Celery  # type: ignore[assignment]

_redis: Any = None


def make_app(name: str) -> Any:
    app = Celery(name, broker=BROKER, backend=BROKER)
    app.conf.update(
        broker_transport_options={"global_keyprefix": PREFIX},
        result_backend_transport_options={"global_keyprefix": PREFIX},
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
    )
    return app


def redis_client() -> Any:
    """One plain Redis client per process, for the tasks' bookkeeping lists."""
    global _redis
    if _redis is None:
        import redis
        _redis = redis.Redis.from_url(BROKER)
    return _redis
