"""Running one task: the middleware chain every pool and eager mode go through.

A middleware is a callable ``mw(ctx, call_next)``; it may act before and after
``call_next(ctx)``.  The innermost step calls the task and records the outcome
on ``ctx`` (no exception crosses the chain).  Results to store are collected on
``ctx.metas`` so the worker can write a batch in one round trip.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import _state, signals, states
from ..exceptions import Ignore, Reject, Retry
from ..protocol.message import TaskMessage, safe_repr
from ..protocol.results import exception_to_dict, make_meta, utcnow_iso
from ..task import Context, Task
from .canvas_mw import canvas_middleware

if TYPE_CHECKING:
    from ..app import Celery
    from ..result import EagerResult

logger = logging.getLogger("celeriac.worker")
Handler = Callable[["ExecContext"], None]
Middleware = Callable[["ExecContext", Handler], None]


class ExecContext:
    __slots__ = ("app", "task", "req", "message", "state", "retval", "exc", "tb", "runtime",
                 "metas", "eager", "hostname", "reject_requeue", "retry", "started_at", "ack",
                 "timer")

    def __init__(self, app: Celery, task: Task[Any, Any], req: Context, message: TaskMessage | None,
                 hostname: str, eager: bool = False) -> None:
        self.app = app
        self.task = task
        self.req = req
        self.message = message
        self.hostname = hostname
        self.eager = eager
        self.state = states.PENDING
        self.retval: Any = None
        self.exc: BaseException | None = None
        self.tb: str | None = None
        self.runtime = 0.0
        self.metas: list[dict[str, Any]] = []
        self.reject_requeue: bool | None = None
        self.retry: Retry | None = None
        self.started_at = 0.0
        self.ack = True  # False: give the message back instead (Reject(requeue=True))
        self.timer: Any = None  # an AlarmTimer (time limits) started around task.run


def context_from_message(msg: TaskMessage, hostname: str, queue: str | None = None,
                         redelivered: bool = False) -> Context:
    # The message's header properties read straight from its dicts (same values), and the
    # Context's attributes set as one dict: this runs once per task in every pool.
    h = msg.headers
    props = msg.properties
    embed = msg.embed or {}
    priority = props.get("priority")
    if not isinstance(priority, int):
        priority = 0
    task_id = msg.id
    req = _new_context(Context)
    req.__dict__ = {
        "id": task_id, "task": msg.task, "args": msg.args, "kwargs": msg.kwargs,
        "retries": int(h.get("retries") or 0), "eta": h.get("eta"), "expires": h.get("expires"),
        "headers": h,
        "delivery_info": {"exchange": "", "routing_key": queue, "priority": priority,
                          "redelivered": redelivered},
        "reply_to": props.get("reply_to"), "correlation_id": props.get("correlation_id") or task_id,
        "root_id": h.get("root_id") or task_id, "parent_id": h.get("parent_id"), "group": h.get("group"),
        "group_index": h.get("group_index"), "chord": embed.get("chord"), "chain": embed.get("chain"),
        "callbacks": embed.get("callbacks"), "errbacks": embed.get("errbacks"), "hostname": hostname,
        "origin": h.get("origin"), "timelimit": h.get("timelimit"),
        "ignore_result": bool(h.get("ignore_result")), "shadow": h.get("shadow"),
        "stamps": h.get("stamps"), "priority": priority, "children": [], "is_eager": False,
    }
    return req


_new_context = object.__new__


# -- the innermost step --------------------------------------------------------

def call_task(ctx: ExecContext) -> None:
    task, req = ctx.task, ctx.req
    _state.push_request(req)
    ctx.started_at = time.monotonic()
    timer = ctx.timer
    try:
        task.before_start(req.id, req.args, req.kwargs)
        if timer is None:
            ctx.retval = task.run(*req.args, **req.kwargs)
        else:
            timer.start()
            try:
                ctx.retval = task.run(*req.args, **req.kwargs)
            finally:
                timer.stop()
        if hasattr(ctx.retval, "__await__"):
            from .aio import run_coroutine
            ctx.retval = run_coroutine(ctx.retval, ctx)
        ctx.state = states.SUCCESS
    except BaseException as exc:  # noqa: BLE001 - everything a task raises is its outcome
        record_exception(ctx, exc)
    finally:
        if timer is not None:
            timer.stop()
        ctx.runtime = time.monotonic() - ctx.started_at
        _state.pop_request()


def record_exception(ctx: ExecContext, exc: BaseException) -> None:
    """Record on ``ctx`` the outcome of a task that raised ``exc``.  Call it inside the
    ``except`` block (the traceback is taken from there); shared with the asyncio pool."""
    if isinstance(exc, Retry):
        ctx.state, ctx.retry, ctx.exc = states.RETRY, exc, exc
        ctx.tb = traceback.format_exc()
    elif isinstance(exc, Ignore):
        ctx.state, ctx.exc = states.IGNORED, exc
    elif isinstance(exc, Reject):
        ctx.state, ctx.exc, ctx.reject_requeue = states.REJECTED, exc, exc.requeue
    else:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not ctx.eager:
            raise exc
        ctx.exc = exc
        ctx.tb = traceback.format_exc()
        ctx.state = states.FAILURE
        _maybe_autoretry(ctx, exc)


def _maybe_autoretry(ctx: ExecContext, exc: BaseException) -> None:
    task = ctx.task
    if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
        return
    if task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for):
        return
    opts = dict(task.retry_kwargs or {})
    if task.retry_backoff:
        opts["countdown"] = task.backoff_delay(ctx.req.retries or 0)
    _state.push_request(ctx.req)
    try:
        task.retry(exc=exc, **opts)
    except Retry as r:
        ctx.state, ctx.retry, ctx.exc = states.RETRY, r, r
    except BaseException as final:  # max retries exceeded: the original error (or MaxRetries)
        ctx.exc = final
        ctx.tb = ctx.tb if final is exc else traceback.format_exc()
    finally:
        _state.pop_request()


# -- middleware ----------------------------------------------------------------

class ExceptionInfo(str):
    """What ``on_failure``/``on_retry`` and ``task_failure`` get as ``einfo``: the formatted
    traceback (it is a ``str``), with Celery's ``.traceback``, ``.exception`` and ``.type``."""

    exception: BaseException | None
    type: type[BaseException] | None

    def __new__(cls, traceback: str | None, exc: BaseException | None) -> ExceptionInfo:
        self = super().__new__(cls, traceback or "")
        self.exception = exc
        self.type = type(exc) if exc is not None else None
        return self

    @property
    def traceback(self) -> str:
        return str(self)

    @property
    def tb(self) -> Any:
        return self.exception.__traceback__ if self.exception is not None else None


def _einfo(ctx: ExecContext, exc: BaseException | None) -> ExceptionInfo | None:
    return None if ctx.tb is None else ExceptionInfo(ctx.tb, exc)


def hooks_middleware(ctx: ExecContext, call_next: Handler) -> None:
    """Task methods on_success / on_failure / on_retry / after_return."""
    call_next(ctx)
    hooks_after(ctx)


def hooks_after(ctx: ExecContext, _: Any = None) -> None:
    task, req = ctx.task, ctx.req
    try:
        if ctx.state == states.SUCCESS:
            task.on_success(ctx.retval, req.id, req.args, req.kwargs)
        elif ctx.state == states.FAILURE and ctx.exc is not None:
            task.on_failure(ctx.exc, req.id, req.args, req.kwargs, _einfo(ctx, ctx.exc))
        elif ctx.state == states.RETRY and ctx.retry is not None:
            exc = ctx.retry.exc if isinstance(ctx.retry.exc, BaseException) else ctx.retry
            task.on_retry(exc, req.id, req.args, req.kwargs, _einfo(ctx, exc))
        if ctx.state in (states.SUCCESS, states.FAILURE, states.RETRY):
            task.after_return(ctx.state, ctx.retval if ctx.state == states.SUCCESS else ctx.exc,
                              req.id, req.args, req.kwargs, _einfo(ctx, ctx.exc))
    except Exception as exc:
        logger.exception("Task %s[%s] handler raised: %r", task.name, req.id, exc)


def signals_middleware(ctx: ExecContext, call_next: Handler) -> None:
    """Celery's task_prerun / postrun / success / failure / retry signals."""
    signals_before(ctx)
    call_next(ctx)
    signals_after(ctx)


def signals_before(ctx: ExecContext) -> None:
    if signals.task_prerun._receivers:
        task, req = ctx.task, ctx.req
        signals.task_prerun.send(sender=task, task_id=req.id, task=task, args=req.args, kwargs=req.kwargs)


def signals_after(ctx: ExecContext, _: Any = None) -> None:
    task, req = ctx.task, ctx.req
    if ctx.state == states.SUCCESS:
        if signals.task_success._receivers:
            signals.task_success.send(sender=task, result=ctx.retval)
    elif ctx.state == states.FAILURE:
        if signals.task_failure._receivers:
            signals.task_failure.send(sender=task, task_id=req.id, exception=ctx.exc, args=req.args,
                                      kwargs=req.kwargs, traceback=ctx.exc.__traceback__ if ctx.exc else None,
                                      einfo=_einfo(ctx, ctx.exc))
    elif ctx.state == states.RETRY:
        if signals.task_retry._receivers:
            signals.task_retry.send(sender=task, request=req, reason=ctx.retry, einfo=_einfo(ctx, ctx.exc))
    elif ctx.state == states.REJECTED:
        if signals.task_rejected._receivers:
            signals.task_rejected.send(sender=task, message=ctx.message, exc=ctx.exc)
    if signals.task_postrun._receivers:
        signals.task_postrun.send(sender=task, task_id=req.id, task=task, args=req.args,
                                  kwargs=req.kwargs, retval=ctx.retval if ctx.exc is None else ctx.exc,
                                  state=ctx.state)


def _extended(ctx: ExecContext) -> dict[str, Any] | None:
    if not ctx.app.conf.result_extended:
        return None
    req = ctx.req
    return {"name": ctx.task.name, "args": list(req.args), "kwargs": req.kwargs, "worker": ctx.hostname,
            "retries": req.retries, "queue": (req.delivery_info or {}).get("routing_key"),
            "date_started": getattr(req, "date_started", None)}


def results_middleware(ctx: ExecContext, call_next: Handler) -> None:
    """STARTED (with track_started) and the final state, as Celery's meta."""
    policy = results_before(ctx)
    call_next(ctx)
    results_after(ctx, policy)


def results_before(ctx: ExecContext) -> tuple[bool, bool]:
    task, req, conf = ctx.task, ctx.req, ctx.app.conf
    ignore = req.ignore_result or (task.ignore_result if task.ignore_result is not None
                                   else conf.task_ignore_result)
    store_errors = task.store_errors_even_if_ignored if task.store_errors_even_if_ignored is not None \
        else conf.task_store_errors_even_if_ignored
    track = task.track_started if task.track_started is not None else conf.task_track_started
    if conf.result_extended:  # only stored with result_extended: skip the clock otherwise
        req.date_started = utcnow_iso()
    if track and not ignore and not ctx.eager:
        ctx.app.backend.store_meta(make_meta(req.id, states.STARTED, {"pid": _pid(), "hostname": ctx.hostname},
                                             ready=False, extended=_extended(ctx)))
    return ignore, store_errors


def results_after(ctx: ExecContext, policy: tuple[bool, bool]) -> None:
    ignore, store_errors = policy
    req, state = ctx.req, ctx.state
    if state in (states.IGNORED, states.REJECTED):
        return
    if ignore and not (store_errors and state == states.FAILURE):
        return
    if state == states.SUCCESS:
        children = [c.as_tuple() for c in getattr(req, "children", None) or []]
        ctx.metas.append(make_meta(req.id, state, ctx.retval, None, children, ready=True,
                                   group_id=req.group, parent_id=req.parent_id, extended=_extended(ctx)))
    elif state in (states.FAILURE, states.RETRY):
        exc = ctx.exc
        if state == states.RETRY and ctx.retry is not None and isinstance(ctx.retry.exc, BaseException):
            exc = ctx.retry.exc
        ctx.metas.append(make_meta(req.id, state, exception_to_dict(exc) if exc else None, ctx.tb,
                                   ready=state == states.FAILURE, group_id=req.group,
                                   parent_id=req.parent_id, extended=_extended(ctx)))


def _pid() -> int:
    import os
    return os.getpid()


def logging_middleware(ctx: ExecContext, call_next: Handler) -> None:
    call_next(ctx)
    logging_after(ctx)


def logging_after(ctx: ExecContext, _: Any = None) -> None:
    task, req = ctx.task, ctx.req
    name = req.shadow or task.name
    if ctx.state == states.SUCCESS:
        if logger.isEnabledFor(logging.INFO):
            logger.info("Task %s[%s] succeeded in %.6fs: %s", name, req.id, ctx.runtime, safe_repr(ctx.retval))
    elif ctx.state == states.FAILURE:
        expected = task.throws and isinstance(ctx.exc, task.throws)
        if expected:
            logger.info("Task %s[%s] raised expected: %r", name, req.id, ctx.exc)
        else:
            logger.error("Task %s[%s] raised unexpected: %r\n%s", name, req.id, ctx.exc, (ctx.tb or "").rstrip())
    elif ctx.state == states.RETRY:
        logger.info("Task %s[%s] retry: %s", name, req.id, ctx.retry)
    elif ctx.state == states.REJECTED:
        logger.warning("Task %s[%s] rejected: %r", name, req.id, ctx.exc)
    elif ctx.state == states.IGNORED:
        logger.info("Task %s[%s] ignored", name, req.id)


DEFAULT_MIDDLEWARE: list[Middleware] = [logging_middleware, results_middleware, canvas_middleware,
                                        signals_middleware, hooks_middleware]

#: Middleware cut in two at ``call_next``, as ``(before, after)``, for a runner that cannot
#: nest a plain call around an ``await`` (the asyncio pool, see aio.py): ``before(ctx)`` runs
#: ahead of the task, ``after(ctx, what_before_returned)`` behind it.  Middleware of other
#: modules can add themselves here; the asyncio pool runs the others in a thread.
PHASES: dict[Any, tuple[Callable[[ExecContext], Any] | None, Callable[[ExecContext, Any], None]]] = {
    logging_middleware: (None, logging_after),
    results_middleware: (results_before, results_after),
    signals_middleware: (signals_before, signals_after),
    hooks_middleware: (None, hooks_after),
}


def fold_chain(middleware: Sequence[Any], terminal: Any, phased: Callable[[list[Any], Any], Any],
               wrap: Callable[[Any, Any], Any]) -> Any:
    """``middleware`` folded around ``terminal``, innermost last: each run of consecutive
    middleware with before/after halves (``PHASES`` or a ``phases`` attribute) becomes one
    ``phased(halves, inner)`` handler, any other middleware ``wrap(mw, inner)``.  Shared by
    the sync chain and the asyncio pool's (``aio.build_async_chain``)."""
    handler = terminal
    group: list[tuple[Any, Any]] = []
    for mw in reversed(middleware):
        phases = PHASES.get(mw) or getattr(mw, "phases", None)
        if phases is not None:
            group.append(phases)
            continue
        if group:
            handler = phased(group[::-1], handler)
            group = []
        handler = wrap(mw, handler)
    if group:
        handler = phased(group[::-1], handler)
    return handler


def build_chain(middleware: Sequence[Middleware], terminal: Handler = call_task) -> Handler:
    """One handler running ``middleware`` around ``terminal``.  Consecutive middleware with
    before/after halves run as their halves in a flat loop, in the order nesting would call
    them (the default chain is only such middleware)."""
    return fold_chain(middleware, terminal, _phased,  # type: ignore[no-any-return]
                      lambda m, nxt: lambda ctx: m(ctx, nxt))


def _phased(phases: list[tuple[Any, Any]], inner: Handler) -> Handler:
    """``phases`` (outermost first) as one handler: every ``before`` in order, ``inner``,
    then every ``after`` in reverse with what its ``before`` returned.  As with nesting, an
    exception leaves the halves after it unrun and reaches the caller."""
    befores = tuple((i, b) for i, (b, _) in enumerate(phases) if b is not None)
    afters = tuple((i, a) for i, (_, a) in enumerate(phases))[::-1]
    n = len(phases)

    def step(ctx: ExecContext) -> None:
        tokens: list[Any] = [None] * n
        for i, before in befores:
            tokens[i] = before(ctx)
        inner(ctx)
        for i, after in afters:
            after(ctx, tokens[i])

    return step


def middleware_for(app: Celery) -> list[Middleware]:
    extra = list(getattr(app, "middleware", []) or [])
    return [*DEFAULT_MIDDLEWARE, *extra]


# -- eager mode ----------------------------------------------------------------

def run_eager(app: Celery, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], task_id: str,
              link: Any = None, link_error: Any = None, retries: int = 0, throw: bool | None = None,
              **options: Any) -> EagerResult[Any]:
    """``apply()``: the whole chain, here; retries run again inline as in Celery."""
    from ..result import EagerResult
    chain = build_chain(middleware_for(app))
    propagate = app.conf.task_eager_propagates if throw is None else throw
    while True:
        parent = _state.current_task_request()
        req = Context(id=task_id, task=task.name, args=args, kwargs=kwargs, retries=retries, is_eager=True,
                      root_id=(parent.root_id if parent else None) or task_id,
                      parent_id=parent.id if parent else None, hostname="eager", children=[],
                      callbacks=link, errbacks=link_error, delivery_info={"routing_key": None},
                      ignore_result=bool(options.get("ignore_result")))
        ctx = ExecContext(app, task, req, None, "eager", eager=True)
        chain(ctx)
        if ctx.metas and app.conf.task_store_eager_result:
            app.backend.store_metas(ctx.metas)
        if ctx.state == states.RETRY and ctx.retry is not None and ctx.retry.sig is not None:
            args, kwargs, retries = ctx.retry.sig
            continue
        break
    if ctx.state == states.FAILURE and propagate and ctx.exc is not None:
        raise ctx.exc
    value = ctx.retval if ctx.state == states.SUCCESS else ctx.exc
    return EagerResult(task_id, value, ctx.state, ctx.tb, name=task.name, app=app)
