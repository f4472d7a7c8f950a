"""Prefork supervision: spawn children (each a WorkLoop with its own consumer),
restart the ones that die, recycle after N tasks or M MiB, kill on the hard time
limit, and settle the messages of a child that died.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import signals, states
from ..events.dispatcher import task_events
from ..exceptions import BackendDisabled, TimeLimitExceeded, WorkerLostError
from ..protocol.results import exception_to_dict, make_meta
from .canvas_mw import finished_without_running
from .control_state import ControlState, install_child_handlers, record_terminated
from .loop import Slot, WorkLoop
from .ratelimit import RateLimits

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.worker")
_ctx = multiprocessing.get_context("fork")
# Blocked while a child is forked, unblocked by the child once its own handlers are in: a
# shutdown signal in between would otherwise run the parent's handler, inherited by the fork,
# in the child (which then stops its copy of the pool, never itself: the warm shutdown hangs).
_SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


@dataclass
class Child:
    index: int
    process: Any
    consumer_id: str
    slot: Slot
    started: float
    killed_for_limit: bool = False


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def _exit_with_parent(parent: int) -> None:
    """A child outlives no SIGKILLed worker: its leases then lapse and the survivors take over."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``) before a
    fork: what start-up freed (import-time temporaries, the collection just done) would
    otherwise stay resident in this process and in every child, about 1 MiB each."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def child_main(app: Celery, index: int, queues: Sequence[str], consumer_id: str, hostname: str,
               prefetch: int, slot: Slot, max_tasks: int | None, redirect: bool,
               rate_share: float = 1.0, control: ControlState | None = None,
               max_memory: int | None = None) -> None:
    multiprocessing.current_process().name = f"ForkPoolWorker-{index}"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    loop = WorkLoop(app, queues, consumer_id, hostname, prefetch, slot=slot, max_tasks=max_tasks,
                    in_main_thread=True, rate_limits=RateLimits(app, share=rate_share),
                    max_memory_kib=max_memory)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    if control is not None:  # revocations, task limits and terminate requests from the control thread
        loop.consumer.control = control
        install_child_handlers(slot, loop)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)  # a pending one lands on our handlers
    if redirect:
        from .logs import redirect_stdouts
        redirect_stdouts(app)
    signals.worker_process_init.send(sender=None)
    try:
        loop.run()
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        sys.stdout.flush()


class Supervisor:
    def __init__(self, app: Celery, queues: Sequence[str], concurrency: int, hostname: str,
                 prefetch: int, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, autoscale: tuple[int, int] | None = None,
                 redirect_stdouts: bool = True) -> None:
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.hostname = hostname
        self.prefetch = prefetch
        self.max_tasks = max_tasks_per_child
        self.max_memory = max_memory_per_child
        self.autoscale = autoscale
        self.redirect = redirect_stdouts
        self.children: dict[int, Child] = {}
        self.run_id = uuid.uuid4().hex[:8]
        self.warm = False
        self.cold = False
        self._gen = 0
        self.processed = 0
        self.control = ControlState()  # shared with the children (made before they fork)
        self.revoked_terminated: dict[str, int] = {}  # task id -> signal sent by revoke(terminate=True)
        self.totals: dict[str, int] = {}  # tasks done by name, by children that have exited
        self.calls: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()  # run by tick()
        self._last_busy = time.monotonic()
        keepalive = app.conf.get("worker_autoscale_keepalive")
        self.keepalive = float(keepalive if keepalive is not None
                               else os.environ.get("AUTOSCALE_KEEPALIVE", 30.0))

    # -- processes -------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        self._gen += 1
        consumer_id = f"{self.hostname}/{self.run_id}/{index}.{self._gen}"
        slot = Slot(sorted(self.app.tasks))
        signals.worker_before_create_process.send(sender=self)
        # Everything alive now goes to the permanent generation: the child's garbage
        # collector then never writes to those objects' headers, so their pages stay
        # shared with this process instead of being copied on the child's first collection.
        gc.collect()
        gc.freeze()
        _trim_heap()
        proc = _ctx.Process(target=child_main, name=f"ForkPoolWorker-{index}",
                            args=(self.app, index, self.queues, consumer_id, self.hostname, self.prefetch,
                                  slot, self.max_tasks, self.redirect,
                                  1.0 / max(self.autoscale[0] if self.autoscale else self.concurrency, 1),
                                  self.control),
                            kwargs={"max_memory": self.max_memory}, daemon=False)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[index] = Child(index, proc, consumer_id, slot, time.monotonic())
        if self.warm and proc.pid is not None:  # stop() ran (a signal handler) while this one was forked
            os.kill(proc.pid, signal.SIGKILL if self.cold else signal.SIGTERM)

    def start(self) -> None:
        initial = self.autoscale[1] if self.autoscale else self.concurrency
        for i in range(1, max(initial, 1) + 1):
            self._spawn(i)

    def grow(self, n: int = 1) -> int:
        for _ in range(n):
            index = 1
            while index in self.children:
                index += 1
            self._spawn(index)
        return len(self.children)

    def shrink(self, n: int = 1) -> int:
        idle = [c for c in self.children.values() if c.slot.running() is None]
        for child in (idle or list(self.children.values()))[:n]:
            if len(self.children) <= 1:
                break
            os.kill(child.process.pid, signal.SIGTERM)
            child.process.join(10)
            self._settle(child, exited_cleanly=True)
            del self.children[child.index]
        return len(self.children)

    # -- supervision -----------------------------------------------------------
    def tick(self) -> None:
        while not self.calls.empty():  # requests of the control thread, run in this thread
            try:
                self.calls.get_nowait()()
            except Exception as exc:
                logger.error("Remote control request failed: %r", exc)
        now = time.time()
        for index, child in list(self.children.items()):
            proc = child.process
            running = child.slot.running()
            if running and running[3] and now > running[3] and proc.exitcode is None:
                logger.error("Hard time limit (%.1fs) exceeded for %s[%s]",
                             running[3] - running[2], running[1], running[0])
                child.killed_for_limit = True
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)
            if proc.exitcode is not None:
                self.processed += child.slot.done
                for name, n in child.slot.totals().items():
                    self.totals[name] = self.totals.get(name, 0) + n
                self._settle(child, exited_cleanly=proc.exitcode == 0 and not child.killed_for_limit)
                del self.children[index]
                if not self.warm and not self.cold:
                    if proc.exitcode != 0 and not child.killed_for_limit:
                        logger.error("Process ForkPoolWorker-%d (pid %d) exited with code %s; replacing it",
                                     index, proc.pid, proc.exitcode)
                    self._spawn(index)
                continue
            if self.max_memory and running is None and _rss_kib(proc.pid) > self.max_memory:
                logger.warning("ForkPoolWorker-%d uses more than %d KiB; recycling it", index, self.max_memory)
                os.kill(proc.pid, signal.SIGTERM)
        if self.autoscale and not self.warm:
            self._autoscale()

    def _autoscale(self) -> None:
        assert self.autoscale is not None
        high, low = self.autoscale
        busy = sum(1 for c in self.children.values() if c.slot.running() is not None)
        n = len(self.children)
        if busy >= n and n < high:
            try:
                backlog = sum(self.app.broker.stats(q).ready for q in self.queues)
            except Exception:
                backlog = 0
            if backlog:
                self.grow(min(high - n, max(1, backlog // max(self.prefetch, 1))))
                logger.info("Autoscale: grew the pool to %d processes", len(self.children))
        if busy:
            self._last_busy = time.monotonic()
        elif n > low and time.monotonic() - self._last_busy > self.keepalive:
            self.shrink(n - low)
            logger.info("Autoscale: shrank the pool to %d processes", len(self.children))

    def _settle(self, child: Child, exited_cleanly: bool) -> None:
        """Give back what a gone child held; record a failure for the task it was running."""
        broker, backend = self.app.broker, self.app.backend
        running = child.slot.running()
        try:
            held = broker.leased(child.consumer_id)
        except Exception as list_error:
            logger.error("Cannot list the messages of a dead process: %r", list_error)
            held = []
        give_back = []
        for d in held:
            tid = d.envelope.headers.get("id")
            if running and tid == running[0] and not exited_cleanly:
                signum = self.revoked_terminated.pop(tid, None)
                if signum is not None:  # revoke(terminate=True): REVOKED, not WorkerLostError
                    record_terminated(self.app, d, running, signum)
                    task_events(self.app, self.hostname).revoked(tid, terminated=True, signum=signum)
                    continue
                task = self.app.tasks.get(running[1])
                if not child.killed_for_limit and (self.cold or (running[4] and self._requeue_lost(task))):
                    give_back.append(d)  # acks_late: it runs again on a live process
                    continue
                exc: BaseException = (TimeLimitExceeded(running[3] - running[2]) if child.killed_for_limit
                                      else WorkerLostError(f"Worker exited prematurely: signal "
                                                           f"{-child.process.exitcode if child.process.exitcode and child.process.exitcode < 0 else child.process.exitcode}."))
                logger.error("Task %s[%s] failed: %r", running[1], running[0], exc)
                task_events(self.app, self.hostname).failed(tid, repr(exc))
                try:
                    backend.store_meta(make_meta(tid, states.FAILURE, exception_to_dict(exc), None, ready=True))
                except BackendDisabled:
                    pass
                finished_without_running(self.app, d.envelope, states.FAILURE, exc)
                if child.killed_for_limit and running[4] and not self._ack_on_timeout(task):
                    d.reject(f"Task hit its time limit with acks_on_failure_or_timeout=False: {exc!r}")
                else:
                    d.ack()
            else:
                give_back.append(d)
        if give_back:
            broker.requeue(give_back)
        broker.release_consumer(child.consumer_id)

    def _requeue_lost(self, task: Any) -> bool:
        """An acks_late task whose process died runs again unless reject_on_worker_lost is False.

        (Celery acks such a message unless reject_on_worker_lost=True; we re-run it by default,
        so that acks_late alone means "never lost": set reject_on_worker_lost=False to get a
        WorkerLostError result instead.)"""
        value = getattr(task, "reject_on_worker_lost", None)
        if value is None:
            value = self.app.conf.task_reject_on_worker_lost
        return value is not False

    def _ack_on_timeout(self, task: Any) -> bool:
        value = getattr(task, "acks_on_failure_or_timeout", None)
        if value is None:
            value = self.app.conf.task_acks_on_failure_or_timeout
        return value is not False

    def stop(self, cold: bool = False) -> None:
        self.warm = True
        self.cold = cold
        for child in self.children.values():
            if child.process.exitcode is None:
                os.kill(child.process.pid, signal.SIGKILL if cold else signal.SIGTERM)

    def join(self) -> None:
        while self.children:
            self.tick()
            if self.children:
                time.sleep(0.05)

    def info(self) -> dict[str, Any]:
        return {"max-concurrency": self.concurrency, "processes": [c.process.pid for c in self.children.values()],
                "autoscale": list(self.autoscale) if self.autoscale else None}
