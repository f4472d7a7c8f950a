"""Canvas tasks for both implementations (``INTEROP_IMPL=celery`` imports Celery, anything
else celeriac), same names either way.  ``INTEROP_BROKER`` (Redis URL, also the result
backend), ``INTEROP_PREFIX`` (global_keyprefix), ``INTEROP_QUEUE``."""

from __future__ import annotations

from typing import Any

from interop_base import BROKER, IMPL, PREFIX, QUEUE, make_app, redis_client  # noqa: F401

RUNS_KEY = PREFIX + "canvas.runs"

app = make_app("canvas_interop_app")


def _note(*parts: Any) -> None:
    redis_client().rpush(RUNS_KEY, " ".join(str(p) for p in parts))


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
