"""celeriac: a fast, Celery-compatible distributed task queue.

Change ``from celery import ...`` to ``from celeriac import ...``; the embedded
SQLite broker means no server is needed to start.
"""

from __future__ import annotations

from typing import Any

from . import states
from .app import Celery, shared_task
from .result import AsyncResult, EagerResult, GroupResult, ResultSet
from .task import Task

__version__ = "0.1.0"
VERSION = (0, 1, 0)

_CANVAS = ("Signature", "signature", "subtask", "chain", "group", "chord", "chunks", "xmap",
           "xstarmap", "maybe_signature")


def __getattr__(name: str) -> Any:
    if name in _CANVAS:
        from . import canvas
        return getattr(canvas, name)
    if name == "current_app":
        from ._state import get_current_app
        return get_current_app()
    if name == "current_task":
        from ._state import current_task_request
        return current_task_request()
    raise AttributeError(f"module 'celeriac' has no attribute {name!r}")


__all__ = ["AsyncResult", "Celery", "EagerResult", "GroupResult", "ResultSet", "Task", "shared_task",
           "states", "__version__", *_CANVAS]
