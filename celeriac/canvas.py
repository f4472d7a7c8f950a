"""Canvas: signatures and the workflows built from them (chain, group, chord, chunks, map).

A :class:`Signature` is a ``dict`` with Celery's six keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it travels in a message exactly as
Celery's does (celery-wire 1.5).  Workflows are signatures too: ``celery.chain``,
``celery.group`` and ``celery.chord`` with their parts in ``kwargs``.

Sending a workflow is done in two steps: ``_prepare`` walks the canvas, pre-assigns
ids and builds every message it has to send *now* into a :class:`~._canvas_send.Batch`;
the batch is then published in one broker round trip.  What runs later (the rest of a
chain, a chord's body, callbacks) rides in the messages' ``embed`` and is sent by the
worker's canvas middleware (``worker/canvas_mw.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from ._canvas_send import Batch, attach_parent
from ._signature import Signature, _as_list, _copy_options, maybe_signature, signature, subtask
from .result import GroupResult


def _new_id() -> str:
    return str(uuid.uuid4())


def _unroll(g: group) -> Signature:
    """A group of one is just its task."""
    tasks = g.tasks
    if len(tasks) == 1 and not g.options:
        return tasks[0]
    return g


def _tasks_arg(tasks: tuple[Any, ...]) -> list[Any]:
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])
    return list(tasks)


# -- chain ----------------------------------------------------------------------------

@Signature.register_type("chain")
class chain(Signature):
    """Steps run one after another, each getting the previous result prepended.

    On the wire the first message carries the rest in ``embed.chain``, last step first."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        app = options.pop("app", None)
        steps: list[Signature] = []
        for t in _tasks_arg(tasks):
            sig = maybe_signature(t, app=app)
            if isinstance(sig, chain) and not sig.options:
                steps.extend(sig.tasks)
            else:
                steps.append(sig)
        super().__init__("celery.chain", (), {"tasks": steps}, options, subtask_type="chain", app=app)
        if app is None and steps:
            self._app = steps[0]._app

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> chain:
        steps = [maybe_signature(t, app=app) for t in d["kwargs"]["tasks"]]
        c = chain(*steps, app=app, **dict(d.get("options") or {}))
        if d.get("immutable"):
            c.immutable = True
        return c

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> chain:
        c = chain(*[t.clone() for t in self.tasks], app=self._app, **_copy_options(self.options))
        c.options.update(opts)
        c.immutable = self.immutable
        if args or kwargs:
            c.kwargs["tasks"][0] = c.tasks[0].clone(args, kwargs)
        return c

    def __or__(self, other: Any) -> Any:
        if isinstance(other, group):
            other = _unroll(other)
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        return NotImplemented

    def _steps(self) -> list[Signature]:
        """Cloned steps; a group followed by a step becomes a chord with that step as body."""
        steps: list[Signature] = []
        for t in self.tasks:
            t = t.clone()
            if isinstance(t, chain):
                inner = t._steps()
                if inner:  # its links go where a chain puts them: link last, link_error all
                    for cb in _as_list(t.options.get("link")):
                        inner[-1].link(cb)
                    for eb in _as_list(t.options.get("link_error")):
                        for step in inner:
                            step.link_error(eb)
                    if t.options.get("task_id"):
                        inner[-1]._set_final_id(t.options["task_id"])
                steps.extend(inner)
            else:
                steps.append(t)
        out: list[Signature] = []
        for t in steps:
            if out and isinstance(out[-1], group):
                out[-1] = chord(out[-1], body=t, app=self._app)
            else:
                out.append(t)
        return out

    def _set_final_id(self, task_id: str) -> None:
        if self.tasks:
            self.tasks[-1]._set_final_id(task_id)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        steps = self._steps()
        self.kwargs["tasks"] = steps
        if not steps:
            return None
        last = steps[-1]
        if _id is not None:
            last._set_final_id(_id)
        result = None
        for i, step in enumerate(steps):
            is_last = i == len(steps) - 1
            res = step.freeze(group_id=group_id if is_last else None,
                              group_index=group_index if is_last else None,
                              chord=chord if is_last else None)
            attach_parent(res, result)
            result = res
        return result

    def _prepare(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
                 options: dict[str, Any], batch: Batch) -> Any:
        opts = {**self.options, **options}
        steps = self._steps()
        if not steps:
            return None
        task_id = opts.pop("task_id", None)
        links = _as_list(opts.pop("link", None))
        errbacks = _as_list(opts.pop("link_error", None))
        outer = list(opts.pop("chain", None) or [])   # the rest of an enclosing chain, last first
        tail = {k: opts.pop(k) for k in ("group_id", "group_index", "chord") if opts.get(k) is not None}
        last = steps[-1]
        if task_id is not None:
            last._set_final_id(task_id)
        for cb in links:
            last.link(cb)
        if errbacks:
            for step in steps:
                for eb in errbacks:
                    step.link_error(eb)
        # ids for the results to come (the worker sends these steps later)
        later = []
        for i, step in enumerate(steps[1:], 1):
            later.append(step.freeze(**_freeze_args(tail if i == len(steps) - 1 else {})))
        first_opts = dict(opts)
        if len(steps) == 1:
            first_opts.update(tail)
        first_opts["chain"] = outer + list(reversed(steps[1:])) or None
        result = steps[0]._prepare(args, kwargs, first_opts, batch)
        for res in later:
            attach_parent(res, result)
            result = res
        return result

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every step here, in order."""
        result: Any = None
        for i, step in enumerate(self._steps()):
            if i == 0:
                res = step.apply(args, kwargs, **options)
            else:
                res = step.apply((result.get(),))
            res.parent = result
            result = res
        return result


def _freeze_args(extra: dict[str, Any]) -> dict[str, Any]:
    return {"group_id": extra.get("group_id"), "group_index": extra.get("group_index"),
            "chord": extra.get("chord")}


# -- group ----------------------------------------------------------------------------

@Signature.register_type("group")
class group(Signature):
    """Tasks run in parallel; the result is a GroupResult.  All members are sent in one
    broker round trip."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        app = options.pop("app", None)
        members = [maybe_signature(t, app=app) for t in _tasks_arg(tasks)]
        super().__init__("celery.group", (), {"tasks": members}, options, subtask_type="group", app=app)
        if app is None and members:
            self._app = members[0]._app

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> group:
        g = group(*[maybe_signature(t, app=app) for t in d["kwargs"]["tasks"]], app=app,
                  **dict(d.get("options") or {}))
        if d.get("args"):
            g.args = d["args"]
        if d.get("immutable"):
            g.immutable = True
        return g

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        return self.apply_async(partial_args, **options)

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.tasks)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self.tasks)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, group):
            other = _unroll(other)
        if isinstance(other, Signature) and not isinstance(other, (chain, group)):
            return chord(self, body=other, app=self._app)
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> group:
        g = group(*[t.clone() for t in self.tasks], app=self._app, **_copy_options(self.options))
        g.options.update(opts)
        g.args = tuple(args or ()) + tuple(self.args)
        g.immutable = self.immutable
        return g

    def link(self, callback: Any) -> Any:
        """Linked to every member (use a chord to run something once after all of them)."""
        for t in self.tasks:
            t.link(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        for t in self.tasks:
            t.link_error(errback)
        return errback

    def _set_final_id(self, task_id: str) -> None:
        self.options["task_id"] = task_id

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> GroupResult:
        gid = self.options.get("task_id") or _id or _new_id()
        self.options["task_id"] = gid
        results = [t.freeze(group_index=i) for i, t in enumerate(self.tasks)]
        return GroupResult(gid, results, app=self.app)

    def _prepare(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
                 options: dict[str, Any], batch: Batch) -> Any:
        opts = {**self.options, **options}
        rest = list(opts.pop("chain", None) or [])
        if rest:  # a group followed by more steps: the next one runs once, as a chord body
            body = maybe_signature(rest.pop(), app=self.app)
            return chord(self, body=body, app=self._app)._prepare(
                args, kwargs, dict(opts, chain=rest or None), batch)
        if not self.immutable and self.args:
            args = tuple(args or ()) + tuple(self.args)
        gid = opts.pop("task_id", None) or _new_id()
        opts.pop("group_index", None)
        results = []
        for i, t in enumerate(self.tasks):
            results.append(t._prepare(args, kwargs, dict(opts, group_id=gid, group_index=i), batch))
        return GroupResult(gid, results, app=self.app)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> GroupResult:
        gid = self.options.get("task_id") or _new_id()
        opts = {k: v for k, v in {**self.options, **options}.items() if k != "task_id"}
        results = [t.apply(args, kwargs, **opts) for t in self.tasks]
        return GroupResult(gid, results, app=self.app)

    def __repr__(self) -> str:
        return f"group({self.tasks!r})"


# -- chord ----------------------------------------------------------------------------

@Signature.register_type("chord")
class chord(Signature):
    """A group (the header) whose results, in header order, go to one task (the body).

    The client records the header size in the result backend, then sends the header;
    each header task carries the body in ``embed.chord``.  The worker that finishes the
    last header task (backend ``chord_join``: counted once per task, one claim) sends
    the body.  No task polls."""

    def __init__(self, header: Any = None, body: Any = None, task: str = "celery.chord",
                 args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                 app: Any = None, **options: Any) -> None:
        header_sig: Any = None
        if isinstance(header, dict):
            header_sig = maybe_signature(header, app=app)
            if not isinstance(header_sig, group):
                header_sig = group(header_sig, app=app)
        elif header is not None:  # a list, tuple or generator of signatures
            header_sig = group(*list(header), app=app)
        body_sig = maybe_signature(body, app=app)
        super().__init__(task, tuple(args or ()),
                         {"kwargs": dict(kwargs or {}), "header": header_sig, "body": body_sig},
                         options, subtask_type="chord", app=app)
        if app is None and header_sig is not None and header_sig.tasks:
            self._app = header_sig._app

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> chord:
        kw = d["kwargs"]
        c = chord(kw.get("header"), kw.get("body"), args=d.get("args"), kwargs=kw.get("kwargs"),
                  app=app, **dict(d.get("options") or {}))
        if d.get("immutable"):
            c.immutable = True
        return c

    @property
    def header(self) -> group:
        return self.kwargs["header"]  # type: ignore[no-any-return]

    @property
    def tasks(self) -> list[Signature]:
        return self.header.tasks if self.header is not None else []

    @property
    def body(self) -> Signature:
        return self.kwargs["body"]  # type: ignore[no-any-return]

    @body.setter
    def body(self, value: Any) -> None:
        self.kwargs["body"] = maybe_signature(value, app=self._app)

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(body)``: send it with ``body`` as the body."""
        if body is not None:
            self.body = body
        return self.apply_async((), **options)

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> chord:
        c = chord(self.header.clone() if self.header is not None else None,
                  self.body.clone() if self.body is not None else None,
                  args=tuple(args or ()) + tuple(self.args), kwargs=dict(self.kwargs["kwargs"]),
                  app=self._app, **_copy_options(self.options))
        c.options.update(opts)
        c.immutable = self.immutable
        return c

    def link(self, callback: Any) -> Any:
        return self.body.link(callback)

    def link_error(self, errback: Any) -> Any:
        return self.body.link_error(errback)

    def _set_final_id(self, task_id: str) -> None:
        self.body._set_final_id(task_id)

    def _flat_header(self) -> list[Signature]:
        """Header members; nested groups are spliced in (their tasks join this chord)."""
        out: list[Signature] = []
        for t in self.tasks:
            if isinstance(t, group):
                out.extend(chord(t, body=None, app=self._app)._flat_header())
            else:
                out.append(t)
        return out

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        gid = self.options.get("task_id") or self.header.options.get("task_id") or _new_id()
        self.options["task_id"] = gid
        self.header.options["task_id"] = gid
        self.header.kwargs["tasks"] = header = self._flat_header()
        results = [t.freeze(group_index=i) for i, t in enumerate(header)]
        if _id is not None:
            self.body._set_final_id(_id)
        body_res = self.body.freeze(group_id=group_id, group_index=group_index, chord=chord)
        attach_parent(body_res, GroupResult(gid, results, app=self.app))
        return body_res

    def _prepare(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None,
                 options: dict[str, Any], batch: Batch) -> Any:
        app = self.app
        opts = {**self.options, **options}
        body = self.body.clone()
        task_id = opts.pop("task_id", None)   # names the body's result, as in Celery
        if task_id and not body.id:
            body._set_final_id(task_id)
        gid = self.header.options.get("task_id") or _new_id()
        rest = opts.pop("chain", None)
        if rest:
            body.options["chain"] = list(rest) + _as_list(body.options.get("chain"))
        for cb in _as_list(opts.pop("link", None)):
            body.link(cb)
        for eb in _as_list(opts.pop("link_error", None)):
            body.link_error(eb)
        # a chord that is itself a member of a group or another chord's header: the body
        # carries that membership, the header tasks carry this chord
        outer = {k: opts.pop(k) for k in ("group_id", "group_index", "chord") if opts.get(k) is not None}
        if self.args and not self.immutable:
            args = tuple(args or ()) + tuple(self.args)
        header = self._flat_header()
        body_res = body.freeze(group_id=outer.get("group_id", gid), group_index=outer.get("group_index"),
                               chord=outer.get("chord"))
        if not header:  # nothing to wait for: the body runs with an empty list
            body_opts = {k: v for k, v in opts.items() if k in ("root_id", "parent_id")}
            body._prepare(([],), None, body_opts, batch)
            attach_parent(body_res, GroupResult(gid, [], app=app))
            return body_res
        batch.before_publish(lambda: app.backend.chord_set_size(gid, len(header)))
        results = []
        for i, t in enumerate(header):
            results.append(t._prepare(args, kwargs, dict(opts, group_id=gid, group_index=i, chord=body), batch))
        attach_parent(body_res, GroupResult(gid, results, app=app))
        return body_res

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        header = group(*self._flat_header(), app=self._app)
        values = header.apply(args, kwargs).get()
        res = self.body.apply((values,), **options)
        res.parent = header
        return res

    def __repr__(self) -> str:
        return f"chord({self.tasks!r}, {self.body!r})"



from ._canvas_map import chunks, replace_task, xmap, xstarmap  # noqa: E402  (they build on the above)

__all__ = ["Signature", "chain", "chord", "chunks", "group", "maybe_signature", "replace_task",
           "signature", "subtask", "xmap", "xstarmap"]
