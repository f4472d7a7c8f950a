"""Which app is current: the last one created (or the one ``set_current()`` chose).

Kept in one place and used only where Celery's API has no app argument
(``shared_task``, ``AsyncResult(id)`` without ``app=``).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celery

_current_app: Celery | None = None
_lock = threading.Lock()
# The stack of executing task requests, as linked pairs (top, rest).  A context
# variable, not a thread-local: each asyncio task sees its own request, and a
# thread sees its own as before.  Pairs are immutable, so a context copied into
# a new asyncio task never shares a mutable stack with its parent.
_request_stack: ContextVar[tuple[Any, Any] | None] = ContextVar("celeriac_request_stack", default=None)
shared_task_constructors: list[Any] = []


def set_current_app(app: Celery) -> None:
    global _current_app
    _current_app = app


def get_current_app() -> Celery:
    global _current_app
    with _lock:
        if _current_app is None:
            from .app import Celery
            _current_app = Celery("default", set_as_current=False)
        return _current_app


def current_task_request() -> Any:
    """The request of the task executing in this thread or asyncio task (None outside tasks)."""
    top = _request_stack.get()
    return top[0] if top is not None else None


def push_request(req: Any) -> None:
    _request_stack.set((req, _request_stack.get()))


def pop_request() -> None:
    top = _request_stack.get()
    if top is not None:
        _request_stack.set(top[1])
