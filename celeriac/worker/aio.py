"""``async def`` tasks: run from a sync pool, and the ``-P asyncio`` pool.

Two ways a coroutine task runs:

* :func:`run_coroutine`, from ``call_task`` in the prefork, threads and solo
  pools and in eager mode: the coroutine runs to completion on an event loop
  kept per thread (made once, reused by every task of that thread).  Time
  limits reach the coroutine at its current ``await``: in a process's main
  thread the ``SIGALRM`` of the time-limit timer is bridged into the loop; in a
  pool thread the loop's own timers enforce them.
* ``AsyncWorkLoop`` (``-P asyncio -c N``, in aio_pool.py): one event loop runs
  up to N tasks at once, each through the chain :func:`build_async_chain` makes.

How an exception gets *into* a coroutine at its await point: the asyncio task
awaits an :class:`_Interruptible` around the coroutine; to interrupt it we cancel
the task and the wrapper throws our exception into the coroutine instead of
``CancelledError`` (so ``except SoftTimeLimitExceeded:`` in the task catches it,
and the loop itself never sees a foreign exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from .execute import ExecContext, fold_chain

AsyncHandler = Callable[[ExecContext], Awaitable[None]]


# -- getting an exception into a coroutine -------------------------------------

class _Interruptible:
    """Awaits ``awaitable``; ``interrupt(task, exc)`` raises ``exc`` inside it at its
    current ``await`` (``task`` is the asyncio task awaiting this object)."""

    __slots__ = ("awaitable", "pending", "active")

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable
        self.pending: BaseException | None = None
        self.active = False

    def interrupt(self, task: asyncio.Task[Any], exc: BaseException) -> bool:
        if not self.active or task.done():
            return False
        self.pending = exc
        task.cancel()
        return True

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.awaitable.__await__()
        send, throw = it.send, getattr(it, "throw", None)
        value: Any = None
        error: BaseException | None = None
        self.active = True
        try:
            while True:
                try:
                    if error is None:
                        yielded = send(value)
                    else:
                        exc, error = error, None
                        if throw is None:
                            raise exc
                        yielded = throw(exc)
                except StopIteration as stop:
                    return stop.value
                try:
                    value = yield yielded
                except BaseException as exc:  # noqa: BLE001 - everything goes into the coroutine
                    if self.pending is not None and isinstance(exc, asyncio.CancelledError):
                        exc, self.pending = self.pending, None
                        _uncancel()
                    error, value = exc, None
        finally:
            self.active = False


def _uncancel() -> None:
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)  # 3.11+: keep asyncio.timeout() in the task right
    if uncancel is not None:
        uncancel()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def resolve_limits(ctx: ExecContext) -> tuple[float | None, float | None]:
    """``(hard, soft)`` seconds for this run: the message's, else the task's, else the worker's."""
    msg, task, conf = ctx.message, ctx.task, ctx.app.conf
    hard, soft = msg.timelimit if msg is not None else (None, None)
    if hard is None:
        hard = task.time_limit if task.time_limit is not None else conf.task_time_limit
    if soft is None:
        soft = task.soft_time_limit if task.soft_time_limit is not None else conf.task_soft_time_limit
    return (float(hard) if hard else None), (float(soft) if soft else None)


# -- from a sync pool: a loop per thread -----------------------------------------

class _ThreadLoop:
    """The event loop of one thread, closed when the thread's locals go away."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()

    def __del__(self) -> None:
        loop = self.loop
        if not loop.is_closed() and not loop.is_running() and self.pid == os.getpid():
            with contextlib.suppress(Exception):
                loop.close()


_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    holder = getattr(_local, "holder", None)
    if holder is None or holder.pid != os.getpid() or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()  # a forked child makes its own
    loop: asyncio.AbstractEventLoop = holder.loop
    return loop


class _Runner:
    """One coroutine on a thread's loop, and how its time limits reach it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> None:
        self.loop = loop
        self.intr = _Interruptible(awaitable)
        self.task: asyncio.Task[Any] | None = None
        self.hard: float | None = None

    def interrupt(self, exc: BaseException) -> None:
        if self.task is not None:
            self.intr.interrupt(self.task, exc)

    def cancel_hard(self, hard: float) -> None:
        if self.task is not None and not self.task.done():
            self.hard = hard
            self.task.cancel()

    def alarm_bridge(self, previous: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
        """A SIGALRM handler around the time-limit timer's: what it raises goes into the
        coroutine.  Raised right here when the coroutine's own code was running (as in a
        sync task), else handed to the loop, which throws it in at the ``await``."""

        def on_alarm(signum: int, frame: Any) -> None:
            try:
                previous(signum, frame)
            except BaseException as exc:
                module = frame.f_globals.get("__name__", "") if frame is not None else ""
                if asyncio.current_task(self.loop) is self.task and not module.startswith(
                        ("asyncio", "selectors", __name__)):
                    raise
                self.loop.call_soon_threadsafe(self.interrupt, exc)

        return on_alarm


def run_coroutine(coro: Awaitable[Any], ctx: ExecContext | None = None) -> Any:
    """Run an ``async def`` task's coroutine to its end from sync code; returns its value.

    The thread's event loop is reused across tasks.  Called in a thread whose loop
    is already running (an eager call from async code), it runs in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _run_in_helper_thread(coro, ctx)
    loop = _thread_loop()
    runner = _Runner(loop, coro)
    handles: list[asyncio.TimerHandle] = []
    on_main = threading.current_thread() is threading.main_thread()
    timer: Any = getattr(ctx, "timer", None) if ctx is not None else None
    restart_timer = timer is not None and not getattr(timer, "active", True)
    previous: Any = None
    if on_main:
        if restart_timer:
            timer.start()  # the timer only ran while task.run() made the coroutine
        current = signal.getsignal(signal.SIGALRM)
        if callable(current) and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
            previous = current
            signal.signal(signal.SIGALRM, runner.alarm_bridge(current))
    elif ctx is not None and not ctx.eager:
        hard, soft = resolve_limits(ctx)  # a pool thread: no SIGALRM here, the loop's timers
        if soft:
            handles.append(loop.call_later(soft, runner.interrupt, SoftTimeLimitExceeded(soft)))
        if hard:
            handles.append(loop.call_later(hard, runner.cancel_hard, hard))
    try:
        runner.task = loop.create_task(_await(runner.intr))
        try:
            return loop.run_until_complete(runner.task)
        except asyncio.CancelledError:
            if runner.hard is not None:
                raise TimeLimitExceeded(runner.hard) from None
            raise
    finally:
        for h in handles:
            h.cancel()
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)
        if restart_timer:
            timer.stop()


def _run_in_helper_thread(coro: Awaitable[Any], ctx: ExecContext | None) -> Any:
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(run_coroutine, coro, ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="celeriac-coroutine", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- the middleware chain around an await ----------------------------------------

def build_async_chain(middleware: Sequence[Any], terminal: AsyncHandler,
                      threads: Callable[[], ThreadPoolExecutor]) -> AsyncHandler:
    """The chain of ``build_chain`` for the event loop.  Middleware with halves in
    ``PHASES`` run in the loop thread, before and after the await of the task; any
    other (plain wrap-around) middleware runs in a thread of ``threads()``, its
    ``call_next`` coming back to the loop."""
    return fold_chain(middleware, terminal, _phased,  # type: ignore[no-any-return]
                      lambda mw, nxt: _threaded(mw, nxt, threads))


def _phased(phases: list[tuple[Any, Any]], inner: AsyncHandler) -> AsyncHandler:
    befores = [(i, b) for i, (b, _) in enumerate(phases) if b is not None]
    afters = [(i, a) for i, (_, a) in enumerate(phases)][::-1]
    n = len(phases)

    async def step(ctx: ExecContext) -> None:
        tokens: list[Any] = [None] * n
        for i, before in befores:
            tokens[i] = before(ctx)
        await inner(ctx)
        for i, after in afters:
            after(ctx, tokens[i])

    return step


def _threaded(mw: Any, inner: AsyncHandler, threads: Callable[[], ThreadPoolExecutor]) -> AsyncHandler:
    async def step(ctx: ExecContext) -> None:
        loop = asyncio.get_running_loop()

        def call_next(c: ExecContext) -> None:
            asyncio.run_coroutine_threadsafe(_await(inner(c)), loop).result()

        # the thread carries this task's context, and so does the task call_next makes
        context = contextvars.copy_context()
        await loop.run_in_executor(threads(), functools.partial(context.run, mw, ctx, call_next))

    return step


def __getattr__(name: str) -> Any:
    if name == "AsyncWorkLoop":  # the pool lives in aio_pool.py
        from .aio_pool import AsyncWorkLoop
        return AsyncWorkLoop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
