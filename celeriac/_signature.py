"""Signatures: a task call as data (Celery's ``Signature``), to send later or embed in messages.

A :class:`Signature` is a ``dict`` with Celery's six keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it travels in a message exactly as
Celery's does (celery-wire 1.5).  The workflow types built on it (chain, group, chord,
chunks, map) are in ``canvas.py``; ``celeriac.canvas`` re-exports all of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

from . import _state
from ._canvas_send import Batch
from .exceptions import NotRegistered
from .result import AsyncResult

_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")


def _new_id() -> str:
    return str(uuid.uuid4())


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Signature(dict):  # type: ignore[type-arg]
    """A task call that can be sent later, passed around and serialized (Celery's ``signature``)."""

    TYPES: ClassVar[dict[str, type[Signature]]] = {}
    _app: Any = None
    _type: Any = None

    def __init__(self, task: Any = None, args: Iterable[Any] | None = None,
                 kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 type: Any = None, subtask_type: str | None = None, immutable: bool = False,
                 app: Any = None, **ex: Any) -> None:
        self._app = app
        if isinstance(task, dict):
            super().__init__((k, task.get(k)) for k in _KEYS)
            self["args"] = tuple(self["args"] or ())
            self["kwargs"] = dict(self["kwargs"] or {})
            self["options"] = dict(self["options"] or {}, **ex)
            self["immutable"] = bool(self["immutable"])
            if isinstance(task, Signature):
                self._app = app or task._app
                self._type = task._type
            return
        name = task
        if task is not None and not isinstance(task, str):  # a task object
            name = task.name
            self._type = task
            self._app = app or getattr(task, "app", None)
        if type is not None:
            self._type = type
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options=dict(options or {}, **ex), subtask_type=subtask_type,
                         immutable=bool(immutable))

    # -- construction from the wire ---------------------------------------------------
    @classmethod
    def register_type(cls, name: str) -> Any:
        def register(klass: type[Signature]) -> type[Signature]:
            cls.TYPES[name] = klass
            return klass
        return register

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        if not cls.TYPES:
            from . import canvas  # noqa: F401  (registers the workflow types)
        kind = cls.TYPES.get(d.get("subtask_type") or "") or cls.TYPES.get(d.get("task") or "")
        if kind is not None and kind is not cls:
            return kind.from_dict(d, app=app)
        return Signature(d, app=app)

    # -- the six keys as attributes -----------------------------------------------------
    @property
    def task(self) -> str:
        return self["task"]  # type: ignore[no-any-return]

    @task.setter
    def task(self, value: str) -> None:
        self["task"] = value

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        return self["args"]  # type: ignore[no-any-return]

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        self["args"] = tuple(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]  # type: ignore[no-any-return]

    @kwargs.setter
    def kwargs(self, value: dict[str, Any]) -> None:
        self["kwargs"] = value

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]  # type: ignore[no-any-return]

    @options.setter
    def options(self, value: dict[str, Any]) -> None:
        self["options"] = value

    @property
    def subtask_type(self) -> str | None:
        return self.get("subtask_type")

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @immutable.setter
    def immutable(self, value: bool) -> None:
        self["immutable"] = bool(value)

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @id.setter
    def id(self, value: str) -> None:
        self.options["task_id"] = value

    @property
    def app(self) -> Any:
        if self._app is None:
            self._app = _state.get_current_app()
        return self._app

    @app.setter
    def app(self, value: Any) -> None:
        self._app = value

    @property
    def type(self) -> Any:
        """The task object (raises NotRegistered when this app does not know it)."""
        if self._type is None:
            self._type = self.app.tasks[self["task"]]
        return self._type

    def _lookup(self) -> Any:
        try:
            return self.type
        except NotRegistered:
            return None

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        return AsyncResult(task_id, app=self.app, task_name=self.task)

    # -- partial application ------------------------------------------------------------
    def _merge(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None,
               force: bool = False) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        opts = {**self.options, **options} if options else dict(self.options)
        if self.immutable and not force:
            return tuple(self.args), dict(self.kwargs), opts
        new_args = tuple(args) + tuple(self.args) if args else tuple(self.args)
        new_kwargs = {**self.kwargs, **kwargs} if kwargs else dict(self.kwargs)
        return new_args, new_kwargs, opts

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> Signature:
        """A copy (links copied too, so linking the copy leaves this one alone); ``args``
        are prepended and ``kwargs`` merged, as when calling it."""
        new_args, new_kwargs, _ = self._merge(args, kwargs, None, force=True)
        options = _copy_options(self.options)
        options.update(opts)
        sig = Signature(self["task"], new_args, new_kwargs, options, subtask_type=self.subtask_type,
                        immutable=self.immutable, app=self._app)
        sig._type = self._type
        return sig

    def replace(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                options: dict[str, Any] | None = None) -> Signature:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (not merged)."""
        sig = self.clone()
        if args is not None:
            sig.args = args
        if kwargs is not None:
            sig.kwargs = dict(kwargs)
        if options is not None:
            sig.options = dict(options)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self.immutable = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Pre-assign the task id (kept if already set) and return the result to come."""
        opts = self.options
        tid = opts.get("task_id") or _id or _new_id()
        opts["task_id"] = tid
        opts.setdefault("reply_to", self.app.oid)
        if group_id is not None:
            opts["group_id"] = group_id
        if group_index is not None:
            opts["group_index"] = group_index
        if chord is not None:
            opts["chord"] = chord
        if root_id is not None:
            opts["root_id"] = root_id
        if parent_id is not None:
            opts["parent_id"] = parent_id
        return self.AsyncResult(tid)

    def _set_final_id(self, task_id: str) -> None:
        """Make ``task_id`` the id of the result this signature ends with."""
        self.options["task_id"] = task_id

    # -- links ----------------------------------------------------------------------
    def link(self, callback: Any) -> Any:
        """Run ``callback`` (with this task's return value prepended) when this one succeeds."""
        self.options["link"] = _as_list(self.options.get("link")) + [callback]
        return callback

    def link_error(self, errback: Any) -> Any:
        """Call ``errback`` when this task fails: ``(request, exc, traceback)`` inline in the
        worker when its function takes several arguments, else sent with the task id."""
        self.options["link_error"] = _as_list(self.options.get("link_error")) + [errback]
        return errback

    def on_error(self, errback: Any) -> Signature:
        self.link_error(errback)
        return self

    # -- calling ----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now (partial arguments merged)."""
        new_args, new_kwargs, _ = self._merge(args, kwargs, None, force=True)
        return self.type(*new_args, **new_kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    route_name: str | None = None, **options: Any) -> Any:
        """Send it; extra ``args`` are prepended, ``kwargs`` and ``options`` merged."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        task = self._lookup()
        if task is not None and type(self) is Signature:
            # through the task's own apply_async: argument checks, custom Task classes
            new_args, new_kwargs, opts = self._merge(args, kwargs, options)
            return task.apply_async(new_args, new_kwargs, **opts)
        return self._send(args, kwargs, options)

    def _send(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
              options: dict[str, Any]) -> Any:
        """Prepare into a batch and publish it in one round trip."""
        add_to_parent = options.pop("add_to_parent", True)
        batch = Batch(self.app)
        result = self._prepare(args, kwargs, options, batch)
        batch.flush()
        parent = _state.current_task_request()
        if add_to_parent and parent is not None and getattr(parent, "children", None) is not None \
                and not parent.is_eager:
            parent.children.append(result)
        return result

    def _prepare(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
                 options: dict[str, Any], batch: Batch) -> Any:
        new_args, new_kwargs, opts = self._merge(args, kwargs, options)
        return batch.add(self["task"], new_args, new_kwargs, opts, self._lookup())

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        """Run it here through the worker's execution path; returns an EagerResult."""
        new_args, new_kwargs, opts = self._merge(args, kwargs, options)
        for key in ("chain", "chord", "group_id", "group_index", "reply_to", "root_id", "parent_id"):
            opts.pop(key, None)
        return self.type.apply(new_args, new_kwargs, **opts)

    # -- composing ---------------------------------------------------------------------
    def __or__(self, other: Any) -> Any:
        from .canvas import _unroll, chain, group
        if isinstance(other, group):
            other = _unroll(other)
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def __invert__(self) -> Any:
        return self.apply_async().get()

    def flatten_links(self) -> list[Signature]:
        """This signature and every callback linked below it, depth first."""
        out: list[Signature] = [self]
        for link in _as_list(self.options.get("link")):
            out.extend(maybe_signature(link, app=self._app).flatten_links())
        return out

    # -- copying and printing ------------------------------------------------------------
    def __deepcopy__(self, memo: Any) -> Signature:
        return self.clone()

    def __reduce__(self) -> Any:
        return (_from_dict, (dict(self),))

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def reprcall(self, *args: Any, **kwargs: Any) -> str:
        parts = [repr(a) for a in (*args, *self.args)]
        parts += [f"{k}={v!r}" for k, v in {**self.kwargs, **kwargs}.items()]
        return f"{self['task']}({', '.join(parts)})"

    def __repr__(self) -> str:
        return ("%" if self.immutable else "") + self.reprcall()


def _copy_options(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("link", "link_error", "chain"):
        value = out.get(key)
        if isinstance(value, (list, tuple)):
            out[key] = list(value)
    return out


def _from_dict(d: dict[str, Any]) -> Signature:
    return Signature.from_dict(d)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature('tasks.add', (2, 2), {}, countdown=10)``, ``signature(add, ...)`` or a dict."""
    if isinstance(varies, dict):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies, app=kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None, clone: bool = False) -> Any:
    """A Signature from a dict (the wire form), or the signature itself; lists map."""
    if d is None:
        return None
    if isinstance(d, (list, tuple)):
        return [maybe_signature(s, app=app, clone=clone) for s in d]
    if isinstance(d, Signature):
        if clone:
            d = d.clone()
    elif isinstance(d, dict):
        d = Signature.from_dict(d, app=app)
    if app is not None and d._app is None:
        d._app = app
    return d


