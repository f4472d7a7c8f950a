"""One task module for both implementations: ``INTEROP_IMPL=celery`` imports Celery,
anything else celeriac.  Same task names either way, so a client of one can call a
worker of the other.

Environment: ``INTEROP_BROKER`` (Redis URL, also the result backend), ``INTEROP_PREFIX``
(the ``global_keyprefix`` for broker and results), ``INTEROP_QUEUE``.
"""

from __future__ import annotations

import os
import time
from typing import Any

IMPL = os.environ.get("INTEROP_IMPL", "celeriac")
BROKER = os.environ.get("INTEROP_BROKER", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("INTEROP_PREFIX", "interop:")
QUEUE = os.environ.get("INTEROP_QUEUE", "celery")
RUNS_KEY = PREFIX + "interop.runs"

if IMPL == "celery":
    from celery import Celery
else:
    from celeriac import Celery  # type: ignore[assignment]

app = Celery("interop_app", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)

_redis: Any = None


def _client() -> Any:
    global _redis
    if _redis is None:
        import redis
        _redis = redis.Redis.from_url(BROKER)
    return _redis


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(name="interop.whoami")
def whoami() -> str:
    return IMPL


@app.task(name="interop.record", bind=True)
def record(self: Any, n: int, pause: float = 0.0) -> int:
    """Append ``<impl> <task id>`` to a Redis list: the test counts runs per id."""
    if pause:
        time.sleep(pause)
    _client().rpush(RUNS_KEY, f"{IMPL} {self.request.id}")
    return n
