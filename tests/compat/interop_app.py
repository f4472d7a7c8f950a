"""One task module for both implementations: ``INTEROP_IMPL=celery`` imports Celery,
anything else celeriac.  Same task names either way, so a client of one can call a
worker of the other.

Environment: ``INTEROP_BROKER`` (Redis URL, also the result backend), ``INTEROP_PREFIX``
(the ``global_keyprefix`` for broker and results), ``INTEROP_QUEUE``.
"""

from __future__ import annotations

import time
from typing import Any

from interop_base import BROKER, IMPL, PREFIX, QUEUE, make_app, redis_client  # noqa: F401

RUNS_KEY = PREFIX + "interop.runs"

app = make_app("interop_app")


def _client() -> Any:
    return redis_client()


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
