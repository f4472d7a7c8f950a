"""Canvas tasks for both implementations (``INTEROP_IMPL=celery`` imports Celery, anything
else celeriac), same names either way.  ``INTEROP_BROKER`` (Redis URL, also the result
backend), ``INTEROP_PREFIX`` (global_keyprefix), ``INTEROP_QUEUE``."""

from __future__ import annotations

import os
from typing import Any

IMPL = os.environ.get("INTEROP_IMPL", "celeriac")
BROKER = os.environ.get("INTEROP_BROKER", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("INTEROP_PREFIX", "interop:")
QUEUE = os.environ.get("INTEROP_QUEUE", "celery")
RUNS_KEY = PREFIX + "canvas.runs"

if IMPL == "celery":
    from celery import Celery
else:
    from celeriac import Celery  # type: ignore[assignment]

app = Celery("canvas_interop_app", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
_redis: Any = None


def _note(*parts: Any) -> None:
    global _redis
    if _redis is None:
        import redis
        _redis = redis.Redis.from_url(BROKER)
    _redis.rpush(RUNS_KEY, " ".join(str(p) for p in parts))


@app.task(name="ci.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="ci.multiply")
def multiply(x: int, y: int) -> int:
    return x * y


@app.task(name="ci.tsum")
def tsum(xs: list[int]) -> int:
    _note(IMPL, "tsum", sum(xs))
    return sum(xs)


@app.task(name="ci.boom")
def boom(*args: Any) -> None:
    raise ValueError("in-chord")


@app.task(name="ci.on_error")
def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
    _note(IMPL, "on_error", request.id, type(exc).__name__)


@app.task(name="ci.record")
def record(value: Any) -> Any:
    _note(IMPL, "record", value)
    return value
