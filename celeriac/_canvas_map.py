"""``task.map``, ``task.starmap``, ``task.chunks`` and ``Task.replace``."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from ._canvas_send import Batch
from ._signature import Signature, _copy_options, maybe_signature
from .canvas import chord as _chord
from .canvas import group as _group


class _basemap(Signature):
    _task_name = ""

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        app = options.pop("app", None)
        sig = maybe_signature(task, app=app)
        super().__init__(self._task_name, (), {"task": sig, "it": list(it)}, options,
                         immutable=True, app=app or (sig._app if isinstance(sig, Signature) else None))

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> _basemap:
        kw = d["kwargs"]
        return cls(kw["task"], kw["it"], app=app, **dict(d.get("options") or {}))

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> _basemap:
        c = type(self)(self.kwargs["task"], self.kwargs["it"], app=self._app, **_copy_options(self.options))
        c.options.update(opts)
        return c


@Signature.register_type("celery.map")
class xmap(_basemap):
    """``task.map(it)``: one message; the worker returns ``[task(x) for x in it]``."""

    _task_name = "celery.map"


@Signature.register_type("celery.starmap")
class xstarmap(_basemap):
    """``task.starmap(it)``: one message; the worker returns ``[task(*x) for x in it]``."""

    _task_name = "celery.starmap"


@Signature.register_type("celery.chunks")
class chunks(Signature):
    """``task.chunks(it, n)``: ``it`` cut into parts of ``n``, each part one starmap
    message, all in one group (the result is a list of lists)."""

    _frozen: Any = None

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        app = options.pop("app", None)
        sig = maybe_signature(task, app=app)
        super().__init__("celery.chunks", (), {"task": sig, "it": list(it), "n": int(n)}, options,
                         immutable=True, app=app or (sig._app if isinstance(sig, Signature) else None))

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> chunks:
        kw = d["kwargs"]
        return chunks(kw["task"], kw["it"], kw["n"], app=app, **dict(d.get("options") or {}))

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> chunks:
        c = chunks(self.kwargs["task"], self.kwargs["it"], self.kwargs["n"], app=self._app,
                   **_copy_options(self.options))
        c.options.update(opts)
        return c

    def __call__(self, **options: Any) -> Any:  # type: ignore[override]
        return self.apply_async(**options)

    def group(self) -> _group:
        task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [list(p) for p in _split(it, n)]
        return _group(*[xstarmap(task, part, app=self._app) for part in parts], app=self._app)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        g = self.group()
        g.options.update(self.options)
        res = g.freeze(_id)
        self.options["task_id"] = g.options["task_id"]
        self._frozen = g
        return res

    def _prepare(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
                 options: dict[str, Any], batch: Batch) -> Any:
        g = getattr(self, "_frozen", None) or self.group()
        return g._prepare(None, None, {**self.options, **options}, batch)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        return self.group().apply(**options)

    @classmethod
    def apply_chunks(cls, task: Any, it: Iterable[Any], n: int, app: Any = None) -> Any:
        return chunks(task, it, n, app=app).apply_async()


def _split(it: Iterable[Any], n: int) -> Iterator[tuple[Any, ...]]:
    if n < 1:
        raise ValueError("chunks: n must be at least 1")
    source = iter(it)
    while True:
        part = tuple(itertools.islice(source, n))
        if not part:
            return
        yield part


# -- Task.replace ------------------------------------------------------------------------

def replace_task(task: Any, sig: Any) -> Any:
    """``self.replace(sig)`` inside a task: ``sig`` takes over this task's id, callbacks,
    errbacks, chain and chord membership; the current task then stops (``Ignore``)."""
    from .exceptions import Ignore
    req = task.request
    app = task._get_app()
    sig = maybe_signature(sig, app=app, clone=True)
    if isinstance(sig, chunks):
        sig = sig.group()
    if isinstance(sig, _group):
        sig = _chord(sig, body=app.tasks["celery.accumulate"].s(index=0), app=app)
    if req.is_eager or not req.id:
        return sig.apply().get()
    sig._set_final_id(req.id)
    nesting = int((req.headers or {}).get("replaced_task_nesting") or 0) + 1
    options: dict[str, Any] = {"root_id": req.root_id, "parent_id": req.parent_id,
                               "replaced_task_nesting": nesting}
    if req.reply_to:
        options["reply_to"] = req.reply_to
    for key, value in (("link", req.callbacks), ("link_error", req.errbacks), ("chain", req.chain),
                       ("chord", req.chord), ("group_id", req.group), ("group_index", req.group_index)):
        if value is not None:
            options[key] = value
    sig._send(None, None, dict(options, add_to_parent=False))
    raise Ignore("Replaced by new task")


