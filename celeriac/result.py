"""Task results: ``AsyncResult`` (stored by a backend), ``EagerResult`` (ran here),
``ResultSet`` and ``GroupResult`` (several at once)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _state, states
from .protocol.results import exception_from_dict, is_exception_dict

if TYPE_CHECKING:
    from .app import Celery
    from .backends.base import ResultBackend

R = TypeVar("R")


def _raise_with_traceback(meta: dict[str, Any]) -> None:
    exc = exception_from_dict(meta.get("result"))
    tb = meta.get("traceback")
    if tb and hasattr(exc, "add_note"):
        exc.add_note(f"\nTraceback from the worker:\n{tb.rstrip()}")
    raise exc


class AsyncResult(Generic[R]):
    """The state and return value of a task, read from the result backend."""

    def __init__(self, id: str, backend: ResultBackend | None = None, task_name: str | None = None,
                 app: Celery | None = None, parent: AsyncResult[Any] | None = None) -> None:
        if id is None:
            raise ValueError("AsyncResult requires a task id, got None")
        self.id = str(id)
        self.app = app or _state.get_current_app()
        self._backend = backend
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None

    @property
    def backend(self) -> ResultBackend:
        return self._backend or self.app.backend

    @property
    def task_id(self) -> str:
        return self.id

    # -- meta ------------------------------------------------------------------
    def _get_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_task_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return meta

    def _set_cache(self, meta: dict[str, Any]) -> dict[str, Any]:
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        return self._get_meta()["status"]

    status = state

    @property
    def result(self) -> Any:
        meta = self._get_meta()
        value = meta.get("result")
        if meta["status"] in states.EXCEPTION_STATES and is_exception_dict(value):
            return exception_from_dict(value)
        return value

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_meta().get("traceback")

    @property
    def date_done(self) -> datetime | None:
        value = self._get_meta().get("date_done")
        return datetime.fromisoformat(value) if isinstance(value, str) else value

    @property
    def children(self) -> list[Any] | None:
        """Results of the tasks this one sent (callbacks, chain steps, subtasks), from its meta."""
        children = self._get_meta().get("children")
        return [result_from_tuple(c, self.app) for c in children] if children else children

    def iterdeps(self, intermediate: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(parent, result)`` for this result and everything below it, parents first.
        IncompleteStream when a result with children to follow is not ready yet (unless
        ``intermediate``)."""
        from .exceptions import IncompleteStream
        todo: list[tuple[Any, Any]] = [(None, self)]
        while todo:
            parent, node = todo.pop(0)
            yield parent, node
            if node.ready():
                todo.extend((node, child) for child in node.children or ())
            elif not intermediate:
                raise IncompleteStream(f"{node!r} is not ready")

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """``(result, value)`` for this result and its children (recursively), parents first."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    # result_extended fields
    @property
    def name(self) -> str | None:
        return self._get_meta().get("name") or self.task_name

    @property
    def args(self) -> Any:
        return self._get_meta().get("args")

    @property
    def kwargs(self) -> Any:
        return self._get_meta().get("kwargs")

    @property
    def worker(self) -> str | None:
        return self._get_meta().get("worker")

    @property
    def retries(self) -> int | None:
        return self._get_meta().get("retries")

    @property
    def queue(self) -> str | None:
        return self._get_meta().get("queue")

    @property
    def date_started(self) -> datetime | None:
        value = self._get_meta().get("date_started")
        return datetime.fromisoformat(value) if isinstance(value, str) else value

    # -- predicates ------------------------------------------------------------
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting ---------------------------------------------------------------
    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, disable_sync_subtasks: bool = True,
            **kwargs: Any) -> R:
        """Wait for the task to finish and return its value; re-raise its exception."""
        if disable_sync_subtasks and _state.current_task_request() is not None \
                and not _state.current_task_request().is_eager:
            raise RuntimeError("Never call result.get() within a task! It can deadlock the worker. "
                               "Use a chain or a chord callback instead.")
        meta = self._set_cache(self.backend.wait_for(self.id, timeout=timeout, interval=interval))
        if meta["status"] in states.PROPAGATE_STATES and propagate:
            _raise_with_traceback(meta)
        value = meta.get("result")
        if meta["status"] in states.EXCEPTION_STATES and is_exception_dict(value):
            return exception_from_dict(value)  # type: ignore[return-value]
        return value  # type: ignore[no-any-return,return-value]

    wait = get  # noqa: F811

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   interval: float = 0.5) -> R:
        """``await result.aget()``: wait without blocking the event loop.  One thread per
        backend waits for every awaiting coroutine (see ``_async_wait``); the result is then
        read (one quick call) as ``get()`` would."""
        import asyncio

        from ._async_wait import waiter_for
        await waiter_for(self.backend).wait(self.id, timeout)
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.get(timeout=timeout, propagate=propagate, interval=interval,
                                   disable_sync_subtasks=False))

    def forget(self) -> None:
        self._cache = None
        self.backend.forget(self.id)

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> None:
        self.app.control.revoke(self.id, terminate=terminate, signal=signal, reply=wait,
                                timeout=timeout or 1.0)

    def then(self, callback: Any, on_error: Any = None, weak: bool = False) -> None:
        raise TypeError("AsyncResult.then() needs a promise-based backend; use link= instead")

    def as_tuple(self) -> Any:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id


class EagerResult(AsyncResult[R]):
    """The result of a task run here (``apply()`` or ``task_always_eager``)."""

    def __init__(self, id: str, ret_value: Any, state: str, traceback: str | None = None,
                 name: str | None = None, app: Celery | None = None) -> None:
        super().__init__(id, app=app, task_name=name)
        self._meta = {"status": state, "result": ret_value, "traceback": traceback,
                      "children": [], "date_done": None, "task_id": id}

    def _get_meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def result(self) -> Any:
        return self._meta["result"]

    info = result

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, disable_sync_subtasks: bool = True,
            **kwargs: Any) -> R:
        if self._meta["status"] in states.PROPAGATE_STATES and propagate:
            exc = self._meta["result"]
            raise exc if isinstance(exc, BaseException) else exception_from_dict(exc)
        return self._meta["result"]  # type: ignore[no-any-return]

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   interval: float = 0.5) -> R:
        return self.get(propagate=propagate)  # already here: nothing to wait for

    def forget(self) -> None:
        pass


class ResultSet:
    """Several results, awaited together."""

    def __init__(self, results: Iterable[AsyncResult[Any]], app: Celery | None = None) -> None:
        self.results = list(results)
        self.app = app or (self.results[0].app if self.results else _state.get_current_app())

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> AsyncResult[Any]:
        return self.results[i]

    def add(self, result: AsyncResult[Any]) -> None:
        if result not in self.results:
            self.results.append(result)

    def _metas(self) -> dict[str, dict[str, Any]]:
        """Metas of the plain results (nested groups answer for themselves: ``_nested``)."""
        return self.app.backend.get_many([r.id for r in self.results if not isinstance(r, ResultSet)])

    def _nested(self) -> list[ResultSet]:
        return [r for r in self.results if isinstance(r, ResultSet)]  # type: ignore[misc]

    def ready(self) -> bool:
        return all(m["status"] in states.READY_STATES for m in self._metas().values()) \
            and all(g.ready() for g in self._nested())

    def successful(self) -> bool:
        return all(m["status"] == states.SUCCESS for m in self._metas().values()) \
            and all(g.successful() for g in self._nested())

    def failed(self) -> bool:
        return any(m["status"] == states.FAILURE for m in self._metas().values()) \
            or any(g.failed() for g in self._nested())

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(m["status"] == states.SUCCESS for m in self._metas().values()) \
            + sum(g.successful() for g in self._nested())

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None, **kwargs: Any) -> None:
        """Revoke every task of the set in one broadcast."""
        if self.results:
            self.app.control.revoke([r.id for r in self.results], terminate=terminate, signal=signal,
                                    reply=wait, timeout=timeout or 1.0)

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            **kwargs: Any) -> list[Any]:
        return self.join(timeout=timeout, propagate=propagate, interval=interval)

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
             **kwargs: Any) -> list[Any]:
        """Values in the order of the results (one backend read per wake-up, not per task)."""
        eager = [r for r in self.results if isinstance(r, EagerResult)]
        if len(eager) == len(self.results):
            return [r.get(propagate=propagate) for r in self.results]
        nested = {id(g): g for g in self._nested()}
        deadline = None if timeout is None else time.monotonic() + timeout
        metas = self.app.backend.wait_for_many([r.id for r in self.results if id(r) not in nested],
                                               timeout=timeout, interval=interval)
        out: list[Any] = []
        for r in self.results:
            if id(r) in nested:  # a group inside the group: its list of values
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                out.append(nested[id(r)].join(timeout=left, propagate=propagate, interval=interval))
                continue
            meta = metas[r.id]
            if meta["status"] in states.PROPAGATE_STATES and propagate:
                _raise_with_traceback(meta)
            value = meta.get("result")
            out.append(exception_from_dict(value) if is_exception_dict(value) else value)
        return out

    join_native = join


class GroupResult(ResultSet):
    """The results of a group, with its id; ``save()``/``restore()`` keep it in the backend."""

    def __init__(self, id: str | None = None, results: Iterable[AsyncResult[Any]] = (),
                 parent: Any = None, app: Celery | None = None) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent

    def as_tuple(self) -> Any:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], [r.as_tuple() for r in self.results]]

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        (backend or self.app.backend).save_group(self.id or "", self.as_tuple())
        return self

    def delete(self, backend: ResultBackend | None = None) -> None:
        (backend or self.app.backend).delete_group(self.id or "")

    @classmethod
    def restore(cls, id: str, backend: ResultBackend | None = None, app: Celery | None = None) -> GroupResult | None:
        app = app or _state.get_current_app()
        data = (backend or app.backend).restore_group(id)
        if data is None:
            return None
        return result_from_tuple(data, app)  # type: ignore[return-value]

    @property
    def children(self) -> list[AsyncResult[Any]]:  # type: ignore[override]
        return self.results

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


class AppGroupResult:
    """What ``app.GroupResult`` is: GroupResult bound to one app (call it, or ``.restore(id)``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        kwargs["app"] = self.app
        return GroupResult(*args, **kwargs)

    def restore(self, id: str, backend: ResultBackend | None = None) -> GroupResult | None:
        return GroupResult.restore(id, backend=backend, app=self.app)


def result_from_tuple(data: Any, app: Celery | None = None) -> AsyncResult[Any] | GroupResult:
    """Rebuild a result from Celery's tuple form (``[[id, parent], children]``)."""
    app = app or _state.get_current_app()
    (id_, parent), nodes = data
    parent_res = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        return GroupResult(id_, [result_from_tuple(n, app) for n in nodes], parent=parent_res, app=app)  # type: ignore[misc]
    return AsyncResult(id_, app=app, parent=parent_res)  # type: ignore[arg-type]
