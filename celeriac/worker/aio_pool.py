"""The ``-P asyncio`` pool: up to ``-c N`` tasks at once on one event loop.

* A fetch thread leases batches from the (blocking) broker, bounded by free
  capacity, and decodes them; the loop starts each message as an asyncio task.
* Each task goes through the middleware chain of ``aio.build_async_chain``: the
  halves in ``execute.PHASES`` run in the loop thread around an ``await`` of the
  task; ``async def`` tasks are awaited, sync tasks run in a thread pool.
* Results and acks are written in batches (every ``FLUSH_SECONDS`` or
  ``FLUSH_COUNT`` items) by one I/O thread, results first.
* Soft time limits raise ``SoftTimeLimitExceeded`` inside the coroutine at its
  ``await``; hard limits cancel it (FAILURE, ``TimeLimitExceeded``);
  :meth:`AsyncWorkLoop.terminate` cancels it (REVOKED).  A sync task in a thread
  cannot be interrupted: at its hard limit its result is recorded and the thread
  is left to finish on its own.
* Warm stop: fetching stops, running tasks finish.  Cold stop (or a second
  stop): they are cancelled and their messages given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import _state, signals, states
from ..brokers.base import Delivery
from ..events.dispatcher import task_events
from ..exceptions import (
    BackendDisabled,
    OperationalError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from ..protocol.results import exception_to_dict, make_meta
from .aio import _Interruptible, _uncancel, build_async_chain, resolve_limits
from .canvas_mw import finished_without_running
from .consumer import Consumer
from .execute import PHASES, ExecContext, context_from_message, middleware_for, record_exception
from .ratelimit import HOLD_SECONDS, RateLimits

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Task

logger = logging.getLogger("celeriac.worker")

FLUSH_SECONDS = 0.05
FLUSH_COUNT = 200
FETCH_TIMEOUT = 1.0
COLD_GRACE = 2.0          # seconds cancelled tasks get to finish on a cold shutdown
SYNC_THREADS = 32         # at most this many sync tasks at once in the asyncio pool

_HARD, _REVOKE, _COLD = "hard", "revoke", "cold"


class _Run:
    """One message being run by the asyncio pool."""

    __slots__ = ("id", "delivery", "ctx", "acks_late", "outer", "task", "intr", "reason", "in_task",
                 "started", "time_start", "hard", "soft", "handles")

    def __init__(self, task_id: str, delivery: Delivery, ctx: ExecContext, acks_late: bool) -> None:
        self.id = task_id
        self.delivery = delivery
        self.ctx = ctx
        self.acks_late = acks_late
        self.outer: asyncio.Task[Any] | None = None   # runs the whole chain
        self.task: asyncio.Task[Any] | None = None    # awaits the task itself (the terminal step)
        self.intr: _Interruptible | None = None
        self.reason: str | None = None                # why it was cancelled
        self.in_task = False
        self.started = False
        self.time_start = 0.0
        self.hard: float | None = None
        self.soft: float | None = None
        self.handles: list[asyncio.TimerHandle] = []

    def cancel(self, reason: str) -> None:
        if self.reason == _COLD:
            return
        self.reason = reason
        if reason == _COLD:
            for t in (self.task, self.outer):
                if t is not None:
                    t.cancel()
        elif self.in_task and self.task is not None:
            self.task.cancel()
            if reason == _HARD:  # a coroutine that swallows the cancellation is cancelled again
                self.handles.append(asyncio.get_running_loop().call_later(1.0, self._again))

    def _again(self) -> None:
        if self.in_task and self.reason == _HARD:
            self.cancel(_HARD)

    def soft_limit(self) -> None:
        if self.in_task and self.task is not None and self.intr is not None:
            self.intr.interrupt(self.task, SoftTimeLimitExceeded(self.soft))
        elif self.in_task:
            logger.warning("Task %s[%s]: soft time limit (%ss) reached; a sync task in a thread "
                           "cannot be interrupted", self.ctx.task.name, self.ctx.req.id, self.soft)

    def info(self) -> dict[str, Any]:
        req = self.ctx.req
        return {"id": req.id, "name": self.ctx.task.name, "args": req.args, "kwargs": req.kwargs,
                "type": self.ctx.task.name, "hostname": self.ctx.hostname, "time_start": self.time_start,
                "acknowledged": not self.acks_late, "delivery_info": req.delivery_info,
                "worker_pid": os.getpid()}


_current_run: contextvars.ContextVar[_Run] = contextvars.ContextVar("celeriac_aio_run")


class _AsyncConsumer(Consumer):
    """The heartbeat reports every started task of the loop (read from its thread)."""

    runs: set[_Run]

    @property  # type: ignore[override]
    def running(self) -> list[Delivery]:
        return [r.delivery for r in list(getattr(self, "runs", ())) if r.started]

    @running.setter
    def running(self, value: Any) -> None:
        pass


class AsyncWorkLoop:
    """``-P asyncio``: up to ``concurrency`` tasks at once on one event loop."""

    def __init__(self, app: Celery, queues: Sequence[str], consumer_id: str, hostname: str,
                 concurrency: int) -> None:
        self.app = app
        self.hostname = hostname
        self.concurrency = max(1, int(concurrency))
        self.consumer = _AsyncConsumer(app, queues, consumer_id, hostname)
        self._runs: set[_Run] = set()
        self.consumer.runs = self._runs
        #: task id -> what runs it; read by remote control (``active()``, ``terminate()``)
        self.running: dict[str, _Run] = {}
        self.processed = 0
        self.totals: dict[str, int] = {}
        conf = app.conf
        self.default_acks_late = bool(conf.task_acks_late)
        self.acks_on_failure = conf.task_acks_on_failure_or_timeout
        self.rate_limits = RateLimits(app)
        self.events = self.consumer.events = task_events(app, hostname)  # task events (-E)
        path = getattr(app.broker, "path", None)  # results and acks in one SQLite transaction
        self._combined = path is not None and path == getattr(app.backend, "path", None) \
            and hasattr(app.backend, "writer")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="celeriac-aio-io")
        self._fetch_pool = ThreadPoolExecutor(1, thread_name_prefix="celeriac-aio-fetch")
        self._sync_pool: ThreadPoolExecutor | None = None
        self._mw_pool: ThreadPoolExecutor | None = None
        middleware = middleware_for(app)
        for mw in middleware:
            if mw not in PHASES and getattr(mw, "phases", None) is None:
                logger.warning("Middleware %r has no before/after halves (execute.PHASES): the asyncio "
                               "pool runs it in a thread per task", mw)
        self.chain = build_async_chain(middleware, self._terminal, self._middleware_threads)
        self._is_async: dict[int, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._cold = False
        self._metas: list[dict[str, Any]] = []
        self._acks: list[Delivery] = []
        self._requeues: list[Delivery] = []
        self._rejects: list[tuple[Delivery, str]] = []
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._dirty: asyncio.Event | None = None
        self._full: asyncio.Event | None = None

    # -- control (any thread) --------------------------------------------------
    def stop(self, cold: bool = False) -> None:
        """Warm stop: no new tasks, running ones finish.  Cold (or a second stop): they are
        cancelled and their messages given back."""
        cold = cold or self._stopping
        self._stopping = True
        self._cold = self._cold or cold
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_stop)

    def terminate(self, task_id: str, signal: Any = None) -> bool:
        """``revoke(terminate=True)``: cancel the running task ``task_id`` (its result is
        REVOKED).  False when it is not running here."""
        run = self.running.get(task_id)
        loop = self._loop
        if run is None or loop is None or loop.is_closed():
            return False
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(run.cancel, _REVOKE)
            return True
        return False

    def active(self) -> list[dict[str, Any]]:
        """The running tasks, as ``inspect().active()`` lists them."""
        return [r.info() for r in list(self.running.values()) if r.started]

    # -- main ------------------------------------------------------------------
    def run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                for pool in (self._io, self._fetch_pool, self._sync_pool, self._mw_pool):
                    if pool is not None:
                        pool.shutdown(wait=False, cancel_futures=True)

    def _on_stop(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._room is not None:
            self._room.set()
        if self._cold:
            for run in list(self._runs):
                run.cancel(_COLD)
            if self._idle is not None:
                self._idle.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake, self._room, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._dirty, self._full = asyncio.Event(), asyncio.Event()
        self._idle.set()
        if self._stopping:
            self._on_stop()
        self.consumer.start_heartbeat()
        fetcher = loop.create_task(self._fetch_loop())
        flusher = loop.create_task(self._flush_loop())
        try:
            await self._wake.wait()
            await fetcher  # ends after its current round trip
            while self._runs:  # warm: the running tasks finish (a cold stop cancels them)
                if self._cold:
                    break
                self._idle.clear()
                await self._idle.wait()
        finally:
            outers = [r.outer for r in self._runs if r.outer is not None]
            if outers:
                await asyncio.wait(outers, timeout=COLD_GRACE)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self.consumer.stop()
            await loop.run_in_executor(self._io, self._write, *self._take(), True)
            self.events.flush()
            # cold: give back what the runs held; warm: only what a publisher may have handed
            # this consumer after its last fetch (Redis hand-off)
            with contextlib.suppress(Exception):
                await loop.run_in_executor(
                    self._io, self.app.broker.release_consumer, self.consumer.consumer_id)

    # -- fetching --------------------------------------------------------------
    def _fetch(self, n: int) -> list[tuple[Delivery, Any]]:
        """In the fetch thread: lease up to ``n`` and decode them (bad ones are settled here)."""
        consumer = self.consumer
        batch = consumer.fetch(n, FETCH_TIMEOUT)
        if self._stopping:
            if batch:
                self.app.broker.requeue(batch)
            return []
        return [(d, consumer.prepare(d)) for d in batch]

    async def _fetch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._room is not None
        backoff = 0.0
        while not self._stopping:
            free = self.concurrency - len(self._runs)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch = await loop.run_in_executor(self._fetch_pool, self._fetch, free)
                backoff = 0.0
            except Exception as exc:
                backoff = min(backoff * 2 or 0.5, 10.0)
                logger.error("Cannot fetch from the broker, retrying in %.1fs: %r", backoff, exc,
                             exc_info=not isinstance(exc, OperationalError))
                assert self._wake is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff)
                continue
            for delivery, prepared in batch:
                if prepared is None:
                    continue  # settled by prepare()
                if self._stopping:
                    self._settled(delivery, "requeue")
                else:
                    self._start(loop, delivery, *prepared)

    def _start(self, loop: asyncio.AbstractEventLoop, delivery: Delivery, msg: Any,
               task: Task[Any, Any]) -> None:
        acks_late = task.acks_late if task.acks_late is not None else self.default_acks_late
        if delivery.started and not acks_late:
            logger.error("Task %s[%s] was started by a worker that died; not running it again "
                         "(set acks_late=True to re-run such tasks)", msg.task, msg.id)
            self._metas.append(make_meta(msg.id, states.FAILURE, exception_to_dict(
                WorkerLostError("Worker exited prematurely while running the task.")), ready=True))
            finished_without_running(self.app, msg, states.FAILURE, WorkerLostError("Worker exited prematurely."))
            self.events.failed(msg.id, "WorkerLostError('Worker exited prematurely.')")
            self._settled(delivery, "ack")
            return
        if self.events.flag.value:
            self.events.received(msg)
        req = context_from_message(msg, self.hostname, delivery.queue, delivery.redelivered)
        run = _Run(msg.id, delivery, ExecContext(self.app, task, req, msg, self.hostname), acks_late)
        run.hard, run.soft = resolve_limits(run.ctx)
        self._runs.add(run)
        self.running[msg.id] = run
        assert self._idle is not None
        self._idle.clear()
        run.outer = loop.create_task(self._execute(run))

    # -- running one -----------------------------------------------------------
    async def _execute(self, run: _Run) -> None:
        _current_run.set(run)
        ctx = run.ctx
        task = ctx.task
        try:
            if (task.rate_limit is not None or task.global_rate_limit is not None
                    or self.rate_limits.default is not None) and not await self._rate_limit(run):
                return
            if self.events.flag.value:
                self.events.started(run.id)
            await self.chain(ctx)
        except BaseException as exc:
            if run.reason == _COLD:
                self._settled(run.delivery, "requeue")  # given back: it runs again elsewhere
                return
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            logger.exception("Task %s[%s]: error in the worker around the task: %r",
                             ctx.task.name, ctx.req.id, exc)
            if not ctx.metas:
                ctx.metas.append(make_meta(run.id, states.FAILURE, exception_to_dict(exc), None,
                                           ready=True))
            ctx.state = states.FAILURE
        finally:
            for h in run.handles:
                h.cancel()
            self._runs.discard(run)
            if self.running.get(run.id) is run:
                del self.running[run.id]
            assert self._room is not None and self._idle is not None
            self._room.set()
            if not self._runs:
                self._idle.set()
        if self.events.flag.value:
            self.events.finished(ctx)
        self.processed += 1
        self.totals[ctx.task.name or ""] = self.totals.get(ctx.task.name or "", 0) + 1
        self._metas.extend(ctx.metas)
        self._settle(run)

    async def _rate_limit(self, run: _Run) -> bool:
        """Wait for the task's token (briefly, else in the broker); False: the message went back."""
        loop = asyncio.get_running_loop()
        task, limits = run.ctx.task, self.rate_limits
        while True:
            if task.global_rate_limit is None:
                wait = limits.delay_for(task)
            else:  # a broker round trip
                wait = await loop.run_in_executor(self._io, limits.delay_for, task)
            if not wait:
                return True
            if wait > HOLD_SECONDS or self._stopping:
                delay = limits.defer(task, wait) if wait > HOLD_SECONDS else None
                await loop.run_in_executor(self._io, functools.partial(run.delivery.requeue, delay=delay))
                return False
            await asyncio.sleep(wait)

    def _settle(self, run: _Run) -> None:
        ctx, delivery = run.ctx, run.delivery
        if ctx.state == states.REVOKED:
            self._metas.append(make_meta(run.id, states.REVOKED,
                                         exception_to_dict(TaskRevokedError("terminated")), ready=True))
            if signals.task_revoked.receivers:
                signals.task_revoked.send(sender=ctx.task, request=ctx.req, terminated=True,
                                          signum=None, expired=False)
            self._settled(delivery, "ack")
        elif ctx.state == states.REJECTED:
            if ctx.reject_requeue:
                self._settled(delivery, "requeue")
            else:
                self._settled(delivery, "reject", f"Rejected by task: {getattr(ctx.exc, 'reason', ctx.exc)!r}")
        elif ctx.state == states.FAILURE and run.acks_late and (
                self.acks_on_failure if ctx.task.acks_on_failure_or_timeout is None
                else ctx.task.acks_on_failure_or_timeout) is False:
            self._settled(delivery, "reject", f"Task failed with acks_on_failure_or_timeout=False: {ctx.exc!r}")
        else:
            self._settled(delivery, "ack")

    def _settled(self, delivery: Delivery, how: str, reason: str = "") -> None:
        if how == "ack":
            self._acks.append(delivery)
        elif how == "requeue":
            self._requeues.append(delivery)
        else:
            self._rejects.append((delivery, reason))
        if self._dirty is not None:
            self._dirty.set()
            if len(self._acks) + len(self._requeues) >= FLUSH_COUNT and self._full is not None:
                self._full.set()

    def _is_coroutine_task(self, task: Task[Any, Any]) -> bool:
        known = self._is_async.get(id(task))
        if known is None:
            known = self._is_async[id(task)] = inspect.iscoroutinefunction(task.run)
        return known

    def _sync_threads(self) -> ThreadPoolExecutor:
        if self._sync_pool is None:
            self._sync_pool = ThreadPoolExecutor(min(self.concurrency, SYNC_THREADS),
                                                 thread_name_prefix="celeriac-aio-sync")
        return self._sync_pool

    def _middleware_threads(self) -> ThreadPoolExecutor:
        if self._mw_pool is None:
            self._mw_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="celeriac-aio-mw")
        return self._mw_pool

    async def _terminal(self, ctx: ExecContext) -> None:
        """``call_task`` for the event loop: await the coroutine (or a sync task in a thread)."""
        run = _current_run.get()
        task, req = ctx.task, ctx.req
        _state.push_request(req)
        ctx.started_at = time.monotonic()
        run.task = asyncio.current_task()
        run.started, run.time_start = True, time.time()
        loop = asyncio.get_running_loop()
        if run.soft:
            run.handles.append(loop.call_later(run.soft, run.soft_limit))
        if run.hard:
            run.handles.append(loop.call_later(run.hard, run.cancel, _HARD))
        try:
            if run.reason == _REVOKE:  # terminated before it began
                raise asyncio.CancelledError()
            task.before_start(run.id, req.args, req.kwargs)
            run.in_task = True
            if self._is_coroutine_task(task):
                awaitable = task.run(*req.args, **req.kwargs)
                if run.soft:
                    run.intr = _Interruptible(awaitable)
                    awaitable = run.intr
                retval = await awaitable
            else:
                call = functools.partial(contextvars.copy_context().run, task.run, *req.args, **req.kwargs)
                retval = await loop.run_in_executor(self._sync_threads(), call)
                if hasattr(retval, "__await__"):
                    retval = await retval
            run.in_task = False
            ctx.retval = retval
            ctx.state = states.SUCCESS
        except asyncio.CancelledError:
            run.in_task = False
            if run.reason == _HARD:
                _uncancel()
                try:
                    raise TimeLimitExceeded(run.hard) from None
                except TimeLimitExceeded as exc:
                    record_exception(ctx, exc)
            elif run.reason == _REVOKE:
                _uncancel()
                ctx.state, ctx.exc = states.REVOKED, TaskRevokedError("terminated")
            else:
                raise
        except BaseException as exc:  # noqa: BLE001 - everything a task raises is its outcome
            run.in_task = False
            record_exception(ctx, exc)
        finally:
            ctx.runtime = time.monotonic() - ctx.started_at
            _state.pop_request()

    # -- results and acks, in batches ------------------------------------------
    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._dirty is not None and self._full is not None
        while True:
            await self._dirty.wait()
            if len(self._acks) + len(self._requeues) < FLUSH_COUNT:
                self._full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), FLUSH_SECONDS)
            self._dirty.clear()
            try:
                await loop.run_in_executor(self._io, self._write, *self._take(), False)
            except Exception as exc:  # never let the writer die: the pool would stall
                logger.exception("Could not write results and acks: %r", exc)

    def _take(self) -> tuple[list[dict[str, Any]], list[Delivery], list[Delivery], list[tuple[Delivery, str]]]:
        taken = (self._metas, self._acks, self._requeues, self._rejects)
        self._metas, self._acks, self._requeues, self._rejects = [], [], [], []
        return taken

    def _write(self, metas: list[dict[str, Any]], acks: list[Delivery], requeues: list[Delivery],
               rejects: list[tuple[Delivery, str]], final: bool) -> None:
        """In the I/O thread: store results, then ack (a crash in between re-runs, never loses)."""
        app = self.app
        tries = 0
        while metas or acks or requeues or rejects:
            try:
                if metas and acks and self._combined:
                    # the embedded store: results and acks in one transaction
                    try:
                        also = app.backend.writer(metas)  # type: ignore[attr-defined]
                    except Exception:  # a result that cannot be encoded: one by one below
                        also = None
                    if also is not None:
                        app.broker.ack(acks, also=also)  # type: ignore[call-arg]
                        app.backend.bell.ring()  # type: ignore[attr-defined]
                        metas, acks = [], []
                if metas:
                    self._store(metas)
                    metas = []
                while rejects:
                    delivery, reason = rejects[0]
                    delivery.reject(reason)
                    rejects.pop(0)
                if acks:
                    app.broker.ack(acks)
                    acks = []
                if requeues:
                    app.broker.requeue(requeues)
                    requeues = []
            except OperationalError as exc:
                tries += 1
                if final and (self._cold or tries >= 10):
                    logger.error("Broker unreachable while stopping; %d results and %d acks not written "
                                 "(the messages will be delivered again): %s", len(metas), len(acks), exc)
                    return
                logger.error("Cannot store results or ack, retrying: %s", exc)
                time.sleep(1.0)

    def _store(self, metas: list[dict[str, Any]]) -> None:
        backend = self.app.backend
        try:
            backend.store_metas(metas)
        except BackendDisabled:
            pass  # no result backend configured
        except OperationalError:
            raise
        except Exception:  # one result that cannot be encoded: store the others, and its error
            for meta in metas:
                try:
                    backend.store_metas([meta])
                except OperationalError:
                    raise
                except Exception as exc:
                    logger.error("Task %s: cannot store its result: %r", meta.get("task_id"), exc)
                    backend.store_metas([make_meta(meta["task_id"], states.FAILURE, exception_to_dict(exc),
                                                   None, ready=True)])
