"""Which app is current: the last one created (or the one ``set_current()`` chose).

Kept in one place and used only where Celery's API has no app argument
(``shared_task``, ``AsyncResult(id)`` without ``app=``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celery

_current_app: Celery | None = None
_lock = threading.Lock()
_task_stack = threading.local()
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
    """The request of the task executing in this thread (None outside tasks)."""
    stack = getattr(_task_stack, "stack", None)
    return stack[-1] if stack else None


def push_request(req: Any) -> None:
    stack = getattr(_task_stack, "stack", None)
    if stack is None:
        stack = _task_stack.stack = []
    stack.append(req)


def pop_request() -> None:
    _task_stack.stack.pop()
