"""The canvas middleware: what a finished task's ``embed`` asks for (celery-wire 1.4).

* success: each callback is sent with the return value prepended (``parent_id`` = this
  task, ``root_id`` inherited); the last element of ``chain`` is sent the same way with
  the rest of the list as its chain.
* failure: errbacks that take ``(request, exc, traceback)`` are called here, the others
  are sent as tasks with the failed task's id prepended; the rest of the chain is marked
  FAILURE with the same exception (so nobody waits for it forever).
* chord header (``embed.chord``), success or failure: ``backend.chord_join`` counts the
  task once per ``(task_id, group_index)``; the one caller that completes the chord and
  wins its claim sends the body with the header results (in header order) prepended, or,
  when a header task failed, stores ``ChordError`` as the body's result and runs the
  body's errbacks.  Nothing polls.

Tasks that end without running (revoked, expired, lost with their worker) go through
:func:`finished_without_running`, so a chord or chain never waits for them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import ChordError
from ..protocol.results import exception_from_dict, exception_to_dict, make_meta
from ..task import Context

if TYPE_CHECKING:
    from .execute import ExecContext, Handler

logger = logging.getLogger("celeriac.worker")


class CanvasMiddleware:
    """Runs after the task (inside the results middleware, so sent callbacks are recorded as
    the task's ``children``).  ``phases`` lets the asyncio pool run it without a thread."""

    def __call__(self, ctx: ExecContext, call_next: Handler) -> None:
        call_next(ctx)
        self.after(ctx)

    @staticmethod
    def after(ctx: ExecContext, _: Any = None) -> None:
        req = ctx.req
        if not (req.callbacks or req.errbacks or req.chain or req.chord):
            return
        try:
            if ctx.state == states.SUCCESS:
                _on_success(ctx)
            elif ctx.state in (states.FAILURE, states.REVOKED) and ctx.exc is not None:
                _after_failure(ctx.app, req, ctx.state, ctx.exc, ctx.tb, ctx.metas, ctx.eager)
        except Exception as exc:  # never lose the task's own result over a canvas step
            logger.exception("Task %s[%s]: canvas step failed: %r", ctx.task.name, req.id, exc)

    @property
    def phases(self) -> tuple[None, Any]:
        return (None, self.after)


canvas_middleware = CanvasMiddleware()


# -- success -------------------------------------------------------------------------

def _on_success(ctx: ExecContext) -> None:
    req, app, retval = ctx.req, ctx.app, ctx.retval
    from ..canvas import maybe_signature
    for cb in req.callbacks or ():
        _send(ctx, maybe_signature(cb, app=app, clone=True), (retval,))
    if req.chain:
        rest = list(req.chain)
        nxt = maybe_signature(rest.pop(), app=app, clone=True)
        _send(ctx, nxt, (retval,), chain=rest or None)
    if req.chord:
        _chord_part(app, req, states.SUCCESS, retval, ctx.metas)


def _send(ctx: ExecContext, sig: Any, args: tuple[Any, ...], **options: Any) -> None:
    """Send (or, eagerly, run) the next signature; if that fails, its result records why."""
    req = ctx.req
    try:
        if ctx.eager:  # apply() runs links here; a chain's steps are run by chain.apply()
            res = sig.apply(args)
        else:
            res = sig.apply_async(args, parent_id=req.id, root_id=req.root_id or req.id,
                                  add_to_parent=False, **options)
    except Exception as exc:
        logger.exception("Task %s[%s]: could not send %r: %r", ctx.task.name, req.id, sig, exc)
        _fail_ids(ctx.metas, _all_ids(sig) + _chain_ids(options.get("chain")), exc, None, req)
        return
    children = getattr(req, "children", None)
    if res is not None and children is not None:
        children.append(res)


# -- failure -------------------------------------------------------------------------

def _after_failure(app: Any, req: Any, state: str, exc: BaseException, tb: str | None,
                   metas: list[dict[str, Any]], eager: bool) -> None:
    """FAILURE or REVOKED: errbacks (FAILURE only), the rest of the chain fails, the chord counts it."""
    if state == states.FAILURE:
        call_errbacks(app, req, exc, tb, eager=eager)
    if req.chain:
        _fail_ids(metas, _chain_ids(req.chain), exc, tb, req)
    if req.chord:
        _chord_part(app, req, state, exception_to_dict(exc), metas)


def call_errbacks(app: Any, req: Any, exc: BaseException, tb: str | None, eager: bool = False) -> None:
    """Errbacks whose function takes several arguments get ``(request, exc, traceback)`` here;
    the others are sent as tasks with the failed task's id prepended."""
    from ..canvas import maybe_signature
    for eb in req.errbacks or ():
        sig = maybe_signature(eb, app=app, clone=True)
        try:
            if _takes_request(sig._lookup()):
                sig(req, exc, tb)
            elif eager:
                sig.apply((req.id,))
            else:
                sig.apply_async((req.id,), parent_id=req.id, root_id=req.root_id or req.id,
                                add_to_parent=False)
        except Exception as err:
            logger.exception("Errback %r of task %s failed: %r", sig, req.id, err)


def _takes_request(task: Any) -> bool:
    """A function task, not bound, that accepts more than one positional argument."""
    fn = getattr(task, "_orig_run", None)
    if fn is None or getattr(task, "_bound_self", False):
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) > 1


def _fail_ids(metas: list[dict[str, Any]], ids: list[str], exc: BaseException, tb: str | None,
              req: Any) -> None:
    err = exception_to_dict(exc)
    for tid in dict.fromkeys(ids):
        metas.append(make_meta(tid, states.FAILURE, err, tb, ready=True, parent_id=req.id))


def _chain_ids(chain: Any) -> list[str]:
    from ..canvas import maybe_signature
    ids: list[str] = []
    for step in chain or ():
        ids.extend(_all_ids(maybe_signature(step)))
    return ids


def _all_ids(sig: Any) -> list[str]:
    """Every pre-assigned task id in a signature (members, bodies, their chains)."""
    return list(_walk_ids(sig))


def _walk_ids(sig: Any) -> Iterator[str]:
    from ..canvas import chain, chord, group
    if sig is None:
        return
    if isinstance(sig, chord):
        for t in sig.tasks:
            yield from _walk_ids(t)
        yield from _walk_ids(sig.body)
    elif isinstance(sig, (group, chain)):
        for t in sig.tasks:
            yield from _walk_ids(t)
    elif sig.id:
        yield sig.id
    yield from _chain_ids(sig.options.get("chain"))


def _finals(sig: Any) -> Iterator[Any]:
    """The plain signatures whose results a canvas ends with."""
    from ..canvas import chain, chord, group
    if isinstance(sig, chord):
        yield from _finals(sig.body)
    elif isinstance(sig, chain):
        if sig.tasks:
            yield from _finals(sig.tasks[-1])
    elif isinstance(sig, group):
        for t in sig.tasks:
            yield from _finals(t)
    elif sig is not None:
        yield sig


# -- chords ----------------------------------------------------------------------------

def _chord_part(app: Any, req: Any, state: str, result: Any, metas: list[dict[str, Any]]) -> None:
    """Count this header task; if it completed the chord, run or fail the body."""
    gid = req.group
    if not gid:
        logger.error("Task %s is a chord header member without a group id; the chord cannot join", req.id)
        return
    ready = app.backend.chord_join(gid, req.id, req.group_index, state, result)
    if ready is None:
        return
    from ..canvas import maybe_signature
    body = maybe_signature(req.chord, app=app, clone=True)
    try:
        failed = next((p for p in ready.parts if p.state in states.PROPAGATE_STATES), None)
        if failed is not None:
            cause = exception_from_dict(failed.result)
            _fail_body(app, body, ChordError(f"Dependency {failed.task_id} raised {cause!r}"), metas, req)
        else:
            try:
                body.apply_async((ready.results,), parent_id=req.id, root_id=req.root_id or req.id,
                                 add_to_parent=False)
            except Exception as exc:
                logger.exception("Chord %s: sending the body failed: %r", gid, exc)
                _fail_body(app, body, ChordError(f"Callback error: {exc!r}"), metas, req)
    finally:
        app.backend.chord_cleanup(gid, ready.token)


def _fail_body(app: Any, body: Any, exc: ChordError, metas: list[dict[str, Any]], req: Any) -> None:
    logger.error("Chord %s failed: %s", req.group, exc)
    ids = _all_ids(body)
    err = exception_to_dict(exc)
    for tid in dict.fromkeys(ids):
        metas.append(make_meta(tid, states.FAILURE, err, None, ready=True, group_id=req.group,
                               parent_id=req.id))
    for final in _finals(body):
        errbacks = final.options.get("link_error")
        if not errbacks:
            continue
        body_req = Context(id=final.id, task=final.task, args=list(final.args), kwargs=dict(final.kwargs),
                           root_id=req.root_id, parent_id=req.id, group=req.group, errbacks=errbacks,
                           chain=None, callbacks=None, chord=None, children=[], is_eager=False,
                           delivery_info={"routing_key": None})
        call_errbacks(app, body_req, exc, None)


# -- tasks that never ran --------------------------------------------------------------

def finished_without_running(app: Any, source: Any, state: str, exc: BaseException) -> None:
    """A task ended without running through the middleware (revoked, expired, lost with a
    worker that acked it early, killed at its hard time limit): fail the rest of its chain,
    call its errbacks (not for REVOKED) and count it in its chord, so nothing waits forever.
    ``source`` is the decoded TaskMessage or the Envelope."""
    try:
        msg = source
        if not hasattr(source, "embed"):
            from ..protocol import codecs
            from ..protocol.message import decode_task_message
            msg = decode_task_message(source, codecs.accept_set(app.conf.accept_content))
        embed = msg.embed or {}
        if not (embed.get("chain") or embed.get("chord") or embed.get("errbacks")):
            return
        req = Context(id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, root_id=msg.root_id,
                      parent_id=msg.parent_id, group=msg.group, group_index=msg.group_index,
                      chain=embed.get("chain"), chord=embed.get("chord"), errbacks=embed.get("errbacks"),
                      callbacks=None, children=[], is_eager=False, headers=msg.headers,
                      delivery_info={"routing_key": None})
        metas: list[dict[str, Any]] = []
        _after_failure(app, req, state, exc, None, metas, eager=False)
        if metas:
            app.backend.store_metas(metas)
    except Exception as err:
        logger.exception("Task %s: canvas clean-up failed: %r", getattr(source, "id", None) or
                         getattr(source, "headers", {}).get("id"), err)
