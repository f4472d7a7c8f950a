"""Sending events: the transport, Celery's ``EventDispatcher`` and the worker's buffered task events.

Transport (celery-wire.md 4.1):

* Redis: ``PUBLISH <global_keyprefix>/<db>.celeryev/<routing key>`` of a kombu
  envelope (``headers = {"hostname": ...}``, ``delivery_mode`` 1, base64 body), so
  Celery's ``EventReceiver`` (``celery events``, Flower) reads it.
* Other brokers (SQLite, memory): the broker's broadcast on channel ``celeryev``
  with the body alone; readers drop it after ``event_queue_ttl`` seconds.

Task events of a worker process go through :class:`TaskEvents`: the process that
runs the task appends the event to a deque and a flusher thread publishes what
has gathered as one JSON array on ``task.multi`` (one publish per flush, not per
event).  Whether task events are on is one byte of shared memory made by the
worker before it forks (:func:`install`), so ``enable_events``/``disable_events``
reach every prefork child; when off, a task costs one read of that byte.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import states
from ..brokers.base import Subscription
from ..protocol.message import Envelope, safe_repr, to_kombu_json
from . import EXCHANGE, TASK_MULTI, Clock, Event, encode, group_from, routing_key_for, utcoffset

if TYPE_CHECKING:
    from ..app import Celery
    from ..protocol.message import TaskMessage
    from ..worker.execute import ExecContext

logger = logging.getLogger("celeriac.events")
FLUSH_SECONDS = 0.05     # task events wait at most this long (plus a publish) to be sent
MAX_BATCH = 500          # events per task.multi message
WARN_EVERY = 30.0        # seconds between two warnings about failed publishes


# -- transport -------------------------------------------------------------------------

class Transport:
    """Publishes event bodies and subscribes to them on ``app``'s broker."""

    def __init__(self, app: Celery, broker: Any = None) -> None:
        self.app = app
        self._broker = broker
        conf = app.conf
        self.exchange = conf.event_exchange or EXCHANGE
        ttl = conf.event_queue_ttl
        self.ttl = float(ttl) if ttl else None

    @property
    def broker(self) -> Any:
        return self._broker if self._broker is not None else self.app.broker

    @staticmethod
    def is_redis(broker: Any) -> bool:
        return hasattr(broker, "_fanout_channel") and hasattr(broker, "client")

    def publish(self, routing_key: str, body: bytes, hostname: str) -> None:
        broker = self.broker
        if self.is_redis(broker):
            env = Envelope(body, {"hostname": hostname}, {"delivery_mode": 1})
            raw = to_kombu_json(env, self.exchange, routing_key, str(uuid.uuid4()))
            with broker._errors():
                broker.client.publish(broker._fanout_channel(self.exchange, routing_key), raw)
        else:
            broker.broadcast(self.exchange, body, ttl=self.ttl)

    def subscribe(self, routing_key: str = "#") -> Subscription:
        """A reader of every event sent from now on (``routing_key`` filters on Redis only)."""
        broker = self.broker
        if self.is_redis(broker):
            return broker.subscribe_broadcast(f"{self.exchange}/{routing_key}")  # type: ignore[no-any-return]
        return broker.subscribe_broadcast(self.exchange)  # type: ignore[no-any-return]


class _Warner:
    """Logs a failed publish at most every ``WARN_EVERY`` seconds (events are best effort)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last >= WARN_EVERY:
            self.last = now
            logger.warning("Could not send %s: %r (events are dropped while the broker is unreachable)",
                           what, exc)


# -- Celery's dispatcher ---------------------------------------------------------------

class EventDispatcher:
    """``app.events.Dispatcher()``: send events by hand, as Celery's does.

    ``send(type, **fields)`` publishes one event at once, unless its group (the part
    of the type before ``-``) is in ``buffer_group``: those wait for ``flush()`` and go
    out as one array on ``task.multi``.  ``groups`` limits what is sent at all.
    """

    def __init__(self, app: Celery, hostname: str | None = None, enabled: bool = True,
                 groups: Any = None, buffer_group: Any = None, clock: Clock | None = None,
                 **kwargs: Any) -> None:
        from . import client_hostname
        self.app = app
        self.hostname = hostname or client_hostname()
        self.enabled = enabled
        self.groups = set(groups) if groups else None
        self.buffer_group = set(buffer_group) if buffer_group else set()
        self.clock = clock or Clock()
        self.transport = Transport(app)
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def send(self, type: str, blind: bool = False, utcoffset: Any = None, **fields: Any) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        group = group_from(type)
        if self.groups is not None and group not in self.groups:
            return None
        offset = utcoffset() if callable(utcoffset) else utcoffset
        event = Event(type, self.hostname, 0 if blind else self.clock.forward(), offset=offset, **fields)
        if group in self.buffer_group:
            with self._lock:
                self._buffer.append(event)
            return event
        self.transport.publish(routing_key_for(type), encode(event), self.hostname)
        return event

    def flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        for i in range(0, len(batch), MAX_BATCH):
            self.transport.publish(TASK_MULTI, encode(batch[i:i + MAX_BATCH]), self.hostname)

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def close(self) -> None:
        self.flush()
        self.disable()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the worker's task events --------------------------------------------------------------

class _Flag:
    """A process-local stand-in for the shared byte (no worker installed one)."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = int(value)


_flags: dict[str, Any] = {}                       # node name -> shared c_byte (made before forking)
_per_process: dict[tuple[int, int, str], TaskEvents] = {}
_registry_lock = threading.Lock()


def install(hostname: str, enabled: bool) -> Any:
    """Make the switch of ``hostname``'s task events; call before forking the pool."""
    flag = _flags.get(hostname)
    if flag is None:
        flag = _flags[hostname] = multiprocessing.RawValue(ctypes.c_byte, 0)
    flag.value = 1 if enabled else 0
    return flag


def task_events(app: Celery, hostname: str) -> TaskEvents:
    """This process's :class:`TaskEvents` for ``hostname`` (one per process, shared by its threads)."""
    key = (os.getpid(), id(app), hostname)
    ev = _per_process.get(key)
    if ev is None:
        with _registry_lock:
            ev = _per_process.get(key)
            if ev is None:
                flag = _flags.get(hostname)
                if flag is None:
                    flag = _Flag(bool(app.conf.worker_send_task_events))
                ev = _per_process[key] = TaskEvents(app, hostname, flag)
    return ev


class TaskEvents:
    """Task events of one worker process, buffered and flushed by a thread.

    Callers on the hot path test ``flag.value`` first; every method also checks it.
    """

    def __init__(self, app: Celery, hostname: str, flag: Any) -> None:
        self.app = app
        self.hostname = hostname
        self.flag = flag
        self.pid = os.getpid()
        self.offset = utcoffset()
        self.clock = Clock()
        self.transport = Transport(app)
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warn = _Warner()

    # -- sending ---------------------------------------------------------------
    def _emit(self, type_: str, fields: dict[str, Any]) -> None:
        event = {"hostname": self.hostname, "utcoffset": self.offset, "pid": self.pid,
                 "clock": self.clock.forward()}
        event.update(fields)
        event["timestamp"] = time.time()
        event["type"] = type_
        self._queue.append(event)
        if not self._wake.is_set():
            if self._thread is None:
                self._start_thread()
            self._wake.set()

    def _start_thread(self) -> None:
        with _registry_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="celeriac-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._closing.wait(FLUSH_SECONDS)  # let more events gather
            self._wake.clear()  # before draining: an event appended later sets it again
            self.flush()

    def flush(self) -> None:
        """Publish what is buffered now (from the flusher thread, or at shutdown)."""
        with self._flush_lock:
            batch: list[dict[str, Any]] = []
            queue = self._queue
            while True:
                try:
                    batch.append(queue.popleft())
                except IndexError:
                    break
            for i in range(0, len(batch), MAX_BATCH):
                try:
                    self.transport.publish(TASK_MULTI, encode(batch[i:i + MAX_BATCH]), self.hostname)
                except Exception as exc:
                    self._warn("task events", exc)
            self.offset = utcoffset()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self.flush()

    # -- the events --------------------------------------------------------------
    def received(self, msg: TaskMessage) -> None:
        if self.flag.value:
            h = msg.headers
            self._emit("task-received", {"uuid": msg.id, "name": msg.task, "args": msg.argsrepr,
                                         "kwargs": msg.kwargsrepr, "root_id": msg.root_id,
                                         "parent_id": msg.parent_id, "retries": msg.retries,
                                         "eta": h.get("eta"), "expires": h.get("expires")})

    def started(self, task_id: str) -> None:
        if self.flag.value:
            self._emit("task-started", {"uuid": task_id})

    def finished(self, ctx: ExecContext) -> None:
        """The outcome recorded on ``ctx``: succeeded, failed, retried, rejected or revoked."""
        if not self.flag.value:
            return
        state, task_id = ctx.state, ctx.req.id
        if state == states.SUCCESS:
            self._emit("task-succeeded", {"uuid": task_id, "result": safe_repr(ctx.retval),
                                          "runtime": ctx.runtime})
        elif state == states.FAILURE:
            self.failed(task_id, safe_repr(ctx.exc), ctx.tb or "")
        elif state == states.RETRY:
            retry = ctx.retry
            exc: Any = retry.exc if retry is not None and isinstance(retry.exc, BaseException) else retry
            self._emit("task-retried", {"uuid": task_id, "exception": safe_repr(exc),
                                        "traceback": ctx.tb or ""})
        elif state == states.REJECTED:
            self.rejected(task_id, bool(ctx.reject_requeue))
        elif state == states.REVOKED:
            self.revoked(task_id, terminated=True)

    def failed(self, task_id: str, exception: str, traceback: str = "") -> None:
        if self.flag.value:
            self._emit("task-failed", {"uuid": task_id, "exception": exception, "traceback": traceback})

    def rejected(self, task_id: str, requeue: bool = False) -> None:
        if self.flag.value:
            self._emit("task-rejected", {"uuid": task_id, "requeue": requeue})

    def revoked(self, task_id: str, terminated: bool = False, signum: Any = None, expired: bool = False) -> None:
        if self.flag.value:
            self._emit("task-revoked", {"uuid": task_id, "terminated": terminated, "signum": signum,
                                        "expired": expired})


def send_task_sent(app: Celery, env: Envelope, queue: str) -> None:
    """The client's ``task-sent`` (with ``task_send_sent_event``): one object on ``task.sent``."""
    disp = getattr(app, "_sent_dispatcher", None)
    if disp is None or disp.pid != os.getpid():
        disp = EventDispatcher(app)
        disp.pid = os.getpid()  # type: ignore[attr-defined]
        app._sent_dispatcher = disp  # type: ignore[attr-defined]
    h = env.headers
    try:
        disp.send("task-sent", uuid=h.get("id"), root_id=h.get("root_id"), parent_id=h.get("parent_id"),
                  name=h.get("task"), args=h.get("argsrepr"), kwargs=h.get("kwargsrepr"),
                  retries=h.get("retries") or 0, eta=h.get("eta"), expires=h.get("expires"),
                  queue=queue, exchange="", routing_key=queue)
    except Exception as exc:
        logger.warning("Could not send the task-sent event of %s: %r", h.get("id"), exc)
