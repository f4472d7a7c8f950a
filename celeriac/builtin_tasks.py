"""Tasks every app has, under Celery's names: ``celery.map``, ``celery.starmap``,
``celery.chunks`` (what ``task.map/starmap/chunks`` send) and ``celery.accumulate``
(the body ``Task.replace`` gives a group)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .task import make_task

if TYPE_CHECKING:
    from .app import Celery


def _task_of(app: Any, sig: Any) -> Any:
    from .canvas import maybe_signature
    return maybe_signature(sig, app=app).type


def celery_map(self: Any, task: Any, it: list[Any]) -> list[Any]:
    fn = _task_of(self.app, task)
    return [fn(item) for item in it]


def celery_starmap(self: Any, task: Any, it: list[Any]) -> list[Any]:
    fn = _task_of(self.app, task)
    return [fn(*item) for item in it]


def celery_chunks(self: Any, task: Any, it: list[Any], n: int) -> Any:
    """Sent by name (a client sends the starmap group itself): send the parts as a group."""
    from .canvas import chunks
    return chunks(task, it, n, app=self.app).apply_async().as_tuple()


def celery_accumulate(self: Any, *args: Any, **kwargs: Any) -> Any:
    index = kwargs.get("index")
    return args[index] if index is not None else args


BUILTINS: list[tuple[str, Callable[..., Any]]] = [
    ("celery.map", celery_map),
    ("celery.starmap", celery_starmap),
    ("celery.chunks", celery_chunks),
    ("celery.accumulate", celery_accumulate),
]


def register_builtins(app: Celery) -> None:
    for name, fn in BUILTINS:
        if name not in app.tasks:
            app.tasks.register(make_task(app, fn, bind=True, name=name))
