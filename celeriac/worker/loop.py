"""The work loop of one consumer: fetch a batch, run each task, store results and
ack in batches.  Solo runs one loop; threads run one loop per thread; prefork runs
one loop per child process (so children fetch for themselves: no hand-off).

Results are stored *before* messages are acked, so a crash in between re-runs a
task rather than losing its result.  Completed work is flushed at least every
``FLUSH_SECONDS`` and whenever the local batch is exhausted.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import states
from ..brokers.base import Delivery
from ..events.dispatcher import task_events
from ..exceptions import BackendDisabled, OperationalError, SoftTimeLimitExceeded, TimeLimitExceeded
from .canvas_mw import finished_without_running
from .consumer import Consumer
from .execute import ExecContext, build_chain, context_from_message, middleware_for
from .ratelimit import HOLD_SECONDS, RateLimits
from .timelimits import AlarmTimer

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.worker")
FLUSH_SECONDS = 0.05
FLUSH_COUNT = 200


class Slot:
    """What a process is running, readable by its supervisor without a syscall."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.nums = multiprocessing.RawArray(ctypes.c_double, 5)  # start, hard deadline, acks_late, done, busy
        self.tid = multiprocessing.RawArray(ctypes.c_char, 64)
        self.name = multiprocessing.RawArray(ctypes.c_char, 200)
        self.term = multiprocessing.RawArray(ctypes.c_char, 64)  # task id to terminate (revoke); control_state
        self.index = {n: i for i, n in enumerate(names)}  # task name -> position in counts
        self._names: dict[str, bytes] = {}  # task name -> what set() writes, made once per name
        self._last_name: str | None = None
        self.counts = multiprocessing.RawArray(ctypes.c_long, max(len(self.index), 1))  # tasks done by name

    def set(self, task_id: str, name: str, hard_deadline: float, acks_late: bool) -> None:
        self.tid.value = task_id.encode()[:63]
        if name is not self._last_name:  # the array keeps the name set last: rewritten on a change
            encoded = self._names.get(name)
            if encoded is None:
                encoded = self._names[name] = name.encode()[:199]
            self.name.value = encoded
            self._last_name = name
        self.nums[0] = time.time()
        self.nums[1] = hard_deadline
        self.nums[2] = 1.0 if acks_late else 0.0
        self.nums[4] = 1.0

    def clear(self) -> None:
        self.nums[4] = 0.0
        self.nums[3] += 1

    def running(self) -> tuple[str, str, float, float, bool] | None:
        if not self.nums[4]:
            return None
        return (self.tid.value.decode(), self.name.value.decode(), self.nums[0], self.nums[1],
                bool(self.nums[2]))

    @property
    def done(self) -> int:
        return int(self.nums[3])

    def count(self, name: str) -> None:
        i = self.index.get(name)
        if i is not None:
            self.counts[i] += 1

    def totals(self) -> dict[str, int]:
        return {n: int(self.counts[i]) for n, i in self.index.items() if self.counts[i]}


class _Settle:
    """Results and acks of the last batch, run inside the next lease transaction; the
    results bell rings as soon as that transaction commits."""

    def __init__(self, store: Any, ack: Any, bell: Any) -> None:
        self.store, self.ack, self.bell = store, ack, bell

    def __call__(self, conn: Any) -> None:
        if self.store is not None:
            self.store(conn)
        self.ack(conn)

    def committed(self) -> None:
        if self.store is not None:
            self.bell.ring()


class WorkLoop:
    def __init__(self, app: Celery, queues: Sequence[str], consumer_id: str, hostname: str,
                 prefetch: int, slot: Slot | None = None, max_tasks: int | None = None,
                 in_main_thread: bool = False, rate_limits: RateLimits | None = None,
                 max_memory_kib: int | None = None) -> None:
        self.app = app
        self.consumer = Consumer(app, queues, consumer_id, hostname)
        self.hostname = hostname
        self.prefetch = max(1, prefetch)
        self.slot = slot
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib  # prefork: recycle the child after the task that passed it
        self.in_main_thread = in_main_thread
        self.chain = build_chain(middleware_for(app))
        self.stop_event = threading.Event()
        self.processed = 0
        self.totals: dict[str, int] = {}
        conf = app.conf
        self.default_limits = (conf.task_time_limit, conf.task_soft_time_limit)
        self.default_acks_late = bool(conf.task_acks_late)
        self.acks_on_failure = conf.task_acks_on_failure_or_timeout
        self.combined = self._same_file()
        # "all": the next fetch stores this batch's results and acks it (SQLite: same file,
        # one transaction; Redis: same server and database, one script); "acks": results
        # are stored first, acks ride on the fetch (Redis with results elsewhere); None: flush
        self.settle_mode = "all" if self.combined else self._broker_settles()
        # soft limits (and, in solo, hard ones) need this process's main thread;
        # a prefork child's hard limit is its supervisor's job
        self.alarm = AlarmTimer(enforce_hard=slot is None) if in_main_thread else None
        self._unlimited_warned: set[str] = set()
        self.rate_limits = rate_limits if rate_limits is not None else RateLimits(app)
        self.events = self.consumer.events = task_events(app, hostname)  # task events (-E)

    def stop(self) -> None:
        self.stop_event.set()

    def _over_memory(self) -> bool:
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError, IndexError):
            return False
        if rss > (self.max_memory_kib or 0):
            logger.warning("Process uses %d KiB, more than max_memory_per_child (%d KiB): "
                           "replacing it after this task", rss, self.max_memory_kib)
            return True
        return False

    # -- main loop -------------------------------------------------------------
    def run(self) -> None:
        consumer = self.consumer
        consumer.start_heartbeat()
        metas: list[dict[str, Any]] = []
        acks: list[Delivery] = []
        requeues: list[Delivery] = []
        batch: list[Delivery] = []
        last_flush = time.monotonic()
        backoff = 0.0
        try:
            while not self.stop_event.is_set():
                try:
                    settle = None
                    if self.settle_mode and (metas or acks) and not requeues:
                        if metas and self.settle_mode == "acks":
                            self._store_first(metas)  # results before acks, always
                        settle = self._settle_fn(metas, acks)
                    batch = consumer.fetch(self.prefetch, timeout=1.0, settle=settle)
                    if settle is not None:
                        metas.clear()
                        acks.clear()
                    if not metas and not acks:
                        last_flush = time.monotonic()  # nothing waits: FLUSH_SECONDS counts from here
                    backoff = 0.0
                except OperationalError as exc:
                    backoff = min(backoff * 2 or 0.5, 10.0)
                    logger.error("Cannot fetch from the broker, retrying in %.1fs: %s", backoff, exc)
                    self.stop_event.wait(backoff)
                    continue
                while batch:
                    delivery = batch.pop(0)
                    if self.stop_event.is_set():
                        batch.insert(0, delivery)
                        break
                    self._process(delivery, metas, acks, requeues)
                    now = time.monotonic()
                    if (batch and (len(acks) >= FLUSH_COUNT or now - last_flush > FLUSH_SECONDS)) \
                            or (not batch and not self.settle_mode):
                        self._flush(metas, acks, requeues)
                        last_flush = now
                    if self.max_tasks and self.processed >= self.max_tasks:
                        self.stop_event.set()
                    if self.max_memory_kib and self._over_memory():
                        self.stop_event.set()
                if not self.settle_mode or requeues:  # requeues (Reject(requeue=True)) are not settled in a lease
                    self._flush(metas, acks, requeues)
        finally:
            consumer.stop()
            self._flush(metas, acks, requeues)
            self.events.flush()
            unfinished = batch
            if unfinished:
                try:
                    self.app.broker.requeue(unfinished)
                except Exception as exc:
                    logger.error("Could not give back %d prefetched messages: %r", len(unfinished), exc)

    def _settle_fn(self, metas: list[dict[str, Any]], acks: list[Delivery]) -> Any:
        if not self.combined:  # a broker that settles by itself (Redis)
            return self.app.broker.settlement(acks, metas, self.app.backend)
        return _Settle(self.app.backend.writer(metas) if metas else None,
                       self.app.broker.ack_statements(acks), self.app.backend.bell)

    def _broker_settles(self) -> str | None:
        settles_with = getattr(self.app.broker, "settles_with", None)
        return settles_with(self.app.backend) if settles_with is not None else None

    def _store_first(self, metas: list[dict[str, Any]]) -> None:
        try:
            self.app.backend.store_metas(metas)
        except BackendDisabled:
            pass  # no result backend configured
        metas.clear()

    def _same_file(self) -> bool:
        broker, backend = self.app.broker, self.app.backend
        path = getattr(broker, "path", None)
        return path is not None and path == getattr(backend, "path", None) and hasattr(backend, "writer")

    def _flush(self, metas: list[dict[str, Any]], acks: list[Delivery], requeues: list[Delivery]) -> None:
        while True:
            try:
                if metas and acks and self.combined:
                    # the embedded store: results and acks in one transaction
                    self.app.broker.ack(acks, also=self.app.backend.writer(metas))
                    self.app.backend.bell.ring()
                    metas.clear()
                    acks.clear()
                if metas:
                    self.app.backend.store_metas(metas)
                    metas.clear()
                if acks:
                    self.app.broker.ack(acks)
                    acks.clear()
                if requeues:
                    self.app.broker.requeue(requeues)
                    requeues.clear()
                return
            except BackendDisabled:
                metas.clear()  # no result backend configured
            except OperationalError as exc:
                if self.stop_event.is_set() and not self._cold():
                    logger.error("Broker unreachable while stopping: %s", exc)
                logger.error("Cannot store results or ack, retrying: %s", exc)
                time.sleep(1.0)

    def _cold(self) -> bool:
        return False

    # -- one task --------------------------------------------------------------
    def _process(self, delivery: Delivery, metas: list[dict[str, Any]], acks: list[Delivery],
                 requeues: list[Delivery]) -> None:
        prepared = self.consumer.prepare(delivery)
        if prepared is None:
            return
        msg, task = prepared
        app = self.app
        if task.rate_limit is not None or task.global_rate_limit is not None \
                or self.rate_limits.default is not None:
            wait = self.rate_limits.delay_for(task)
            while wait:  # over its limit: wait here briefly, else in the broker
                if wait > HOLD_SECONDS:
                    delivery.requeue(delay=self.rate_limits.defer(task, wait))
                    return
                if self.stop_event.wait(wait):
                    requeues.append(delivery)
                    return
                wait = self.rate_limits.delay_for(task)
        acks_late = task.acks_late if task.acks_late is not None else self.default_acks_late
        if delivery.started and not acks_late:
            # A previous holder started it and died: ack-on-start means it must not run twice.
            from ..exceptions import WorkerLostError
            from ..protocol.results import exception_to_dict, make_meta
            logger.error("Task %s[%s] was started by a worker that died; not running it again "
                         "(set acks_late=True to re-run such tasks)", msg.task, msg.id)
            metas.append(make_meta(msg.id, states.FAILURE, exception_to_dict(
                WorkerLostError("Worker exited prematurely while running the task.")), ready=True))
            finished_without_running(app, msg, states.FAILURE, WorkerLostError("Worker exited prematurely."))
            self.events.failed(msg.id, "WorkerLostError('Worker exited prematurely.')")
            acks.append(delivery)
            return
        req = context_from_message(msg, self.hostname, delivery.queue, delivery.redelivered)
        ctx = ExecContext(app, task, req, msg, self.hostname)
        hard, soft = msg.timelimit
        hard = hard if hard is not None else (task.time_limit if task.time_limit is not None else self.default_limits[0])
        soft = soft if soft is not None else (task.soft_time_limit if task.soft_time_limit is not None
                                              else self.default_limits[1])
        events = self.events if self.events.flag.value else None  # off: this one read per task
        if events is not None:
            events.begin(msg)  # task-received, task-started
        if self.slot is not None:
            self.slot.set(msg.id, msg.task, time.time() + hard if hard else 0.0, acks_late)
        self.consumer.mark_running(delivery)
        alarm = self.alarm
        if alarm is not None and (soft or hard) and alarm.prepare(soft, hard):
            ctx.timer = alarm
        elif alarm is None and (soft or hard) and msg.task not in self._unlimited_warned:
            self._unlimited_warned.add(msg.task)
            logger.warning("Task %s has a time limit, which this pool (threads) cannot enforce; "
                           "see docs/time-limits.md", msg.task)
        try:
            self.chain(ctx)
        except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
            # an alarm that fired in the worker's own code around the task: the task is over
            logger.warning("Task %s[%s]: time limit signal after the task returned: %r", msg.task, msg.id, exc)
        finally:
            if ctx.timer is not None:
                ctx.timer.stop()
            self.consumer.mark_running(None)
            if self.slot is not None:
                self.slot.clear()
        if events is not None:
            events.finished(ctx)
        self.processed += 1
        self.totals[msg.task] = self.totals.get(msg.task, 0) + 1  # stats(); prefork: in the slot
        if self.slot is not None:
            self.slot.count(msg.task)
        metas.extend(ctx.metas)
        if ctx.state == states.REJECTED:
            if ctx.reject_requeue:
                requeues.append(delivery)
            else:
                delivery.reject(f"Rejected by task: {getattr(ctx.exc, 'reason', ctx.exc)!r}")
            return
        if ctx.state == states.FAILURE and acks_late:
            on_failure = task.acks_on_failure_or_timeout
            if (self.acks_on_failure if on_failure is None else on_failure) is False:
                # Celery rejects such a message without requeue: it goes to the dead letters
                self._flush(metas, acks, requeues)
                delivery.reject(f"Task failed with acks_on_failure_or_timeout=False: {ctx.exc!r}")
                return
        acks.append(delivery)
