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
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
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
FLUSH_SECONDS = 0.1      # task events wait at most this long (plus a publish) to be sent
MAX_BATCH = 500          # events per task.multi message
WARN_EVERY = 30.0        # seconds between two warnings about failed publishes


# -- transport -------------------------------------------------------------------------

class Transport:
    """Publishes event bodies and subscribes to them on ``app``'s broker."""

    def __init__(self, app: Celery, broker: Any = None) -> None:
        self.app = app
        self._broker = broker
        self._listened: tuple[Any, Any] | None = None  # (broker, ListenerCheck or None)
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
                broker.client.execute("PUBLISH", broker._fanout_channel(self.exchange, routing_key), raw)
        elif self._anyone_listening(broker):
            broker.broadcast(self.exchange, body, ttl=self.ttl)

    def subscribe(self, routing_key: str = "#") -> Subscription:
        """A reader of every event sent from now on (``routing_key`` filters on Redis only)."""
        broker = self.broker
        if self.is_redis(broker):
            return broker.subscribe_broadcast(f"{self.exchange}/{routing_key}")  # type: ignore[no-any-return]
        sub = broker.subscribe_broadcast(self.exchange)
        path = self._sqlite_path(broker)
        return sub if path is None else _Listening(sub, path, self.exchange)

    # -- SQLite: events are written only while someone listens (events/listeners.py) ----
    @staticmethod
    def _sqlite_path(broker: Any) -> str | None:
        path = getattr(broker, "path", None)
        return path if isinstance(path, str) and hasattr(broker, "broadcast") else None

    def _anyone_listening(self, broker: Any) -> bool:
        cached = self._listened
        if cached is None or cached[0] is not broker:
            from .listeners import ListenerCheck
            path = self._sqlite_path(broker)
            cached = self._listened = (broker, ListenerCheck(path, self.exchange) if path else None)
        return cached[1] is None or bool(cached[1])

    def refresh_listeners(self) -> None:
        """Look for listeners again at the next publish (a receiver just said hello)."""
        if self._listened is not None and self._listened[1] is not None:
            self._listened[1].refresh()


class _Listening(Subscription):
    """A SQLite event subscription that keeps its row in the listeners table."""

    def __init__(self, sub: Subscription, path: str, channel: str) -> None:
        from . import listeners
        self.sub, self.path, self.channel = sub, path, channel
        self.id = str(uuid.uuid4())
        self.listeners = listeners
        listeners.listen(path, self.id, channel)
        self.next_refresh = time.monotonic() + listeners.REFRESH_SECONDS

    def get(self, timeout: float) -> list[bytes]:
        if time.monotonic() >= self.next_refresh:
            self.next_refresh = time.monotonic() + self.listeners.REFRESH_SECONDS
            self.listeners.listen(self.path, self.id, self.channel)
        return self.sub.get(timeout)

    def close(self) -> None:
        try:
            self.listeners.leave(self.path, self.id)
        finally:
            self.sub.close()


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

    The hot path records a small tuple (kind, clock, time, data); the flusher thread
    renders the JSON text of each event (keys in Celery's order) and publishes them
    as one array.  Callers on the hot path test ``flag.value`` first; every method
    also checks it.
    """

    def __init__(self, app: Celery, hostname: str, flag: Any) -> None:
        self.app = app
        self.hostname = hostname
        self.flag = flag
        self.pid = os.getpid()
        self.offset = utcoffset()
        self._clock = itertools.count(1)
        self.transport = Transport(app)
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._full = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warn = _Warner()

    # -- buffering -------------------------------------------------------------
    def _push(self, item: tuple[Any, ...]) -> None:
        queue = self._queue
        queue.append(item)
        if not self._wake.is_set():
            if self._thread is None:
                self._start_thread()
            self._wake.set()
        elif len(queue) == MAX_BATCH:  # a backlog runs: send a full batch now, hold less memory
            self._full.set()

    def _start_thread(self) -> None:
        with _registry_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="celeriac-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._full.wait(FLUSH_SECONDS)  # let more events gather (not too many: see _push)
            self._full.clear()
            self._wake.clear()  # before draining: an event appended later sets it again
            self.flush()

    def flush(self) -> None:
        """Publish what is buffered now (from the flusher thread, or at shutdown)."""
        with self._flush_lock:
            items: list[tuple[Any, ...]] = []
            queue = self._queue
            while True:
                try:
                    items.append(queue.popleft())
                except IndexError:
                    break
            if items:
                head = (f'{{"hostname": {_str(self.hostname)}, "utcoffset": {self.offset!r}, '
                        f'"pid": {self.pid}, "clock": ')
                texts: list[str] = []
                for item in items:
                    try:
                        texts.extend(_RENDER[item[0]](head, item))
                    except Exception as exc:  # a value JSON cannot carry: drop that event only
                        logger.debug("Dropping an event that cannot be encoded: %r", exc)
                for i in range(0, len(texts), MAX_BATCH):
                    body = ("[" + ", ".join(texts[i:i + MAX_BATCH]) + "]").encode("utf-8")
                    try:
                        self.transport.publish(TASK_MULTI, body, self.hostname)
                    except Exception as exc:
                        self._warn("task events", exc)
            self.offset = utcoffset()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._full.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self.flush()

    # -- the events --------------------------------------------------------------
    def begin(self, msg: TaskMessage) -> None:
        """task-received then task-started (the loop pools run a task as soon as they take it)."""
        if self.flag.value:
            clock = next(self._clock)
            next(self._clock)
            self._push((_BEGIN, clock, time.time(), msg))

    def received(self, msg: TaskMessage) -> None:
        if self.flag.value:
            self._push((_RECEIVED, next(self._clock), time.time(), msg))

    def started(self, task_id: str) -> None:
        if self.flag.value:
            self._push((_STARTED, next(self._clock), time.time(), task_id))

    def finished(self, ctx: ExecContext) -> None:
        """The outcome recorded on ``ctx``: succeeded, failed, retried, rejected or revoked."""
        if not self.flag.value:
            return
        state, task_id = ctx.state, ctx.req.id
        if state == states.SUCCESS:
            self._push((_SUCCEEDED, next(self._clock), time.time(), task_id, safe_repr(ctx.retval), ctx.runtime))
        elif state == states.FAILURE:
            self.failed(task_id, safe_repr(ctx.exc), ctx.tb or "")
        elif state == states.RETRY:
            retry = ctx.retry
            exc: Any = retry.exc if retry is not None and isinstance(retry.exc, BaseException) else retry
            self.emit("task-retried", uuid=task_id, exception=safe_repr(exc), traceback=ctx.tb or "")
        elif state == states.REJECTED:
            self.rejected(task_id, bool(ctx.reject_requeue))
        elif state == states.REVOKED:
            self.revoked(task_id, terminated=True)

    def emit(self, type_: str, **fields: Any) -> None:
        """Any event, its fields in this order (between the common ones)."""
        if self.flag.value:
            self._push((_OTHER, next(self._clock), time.time(), type_, fields))

    def failed(self, task_id: str, exception: str, traceback: str = "") -> None:
        self.emit("task-failed", uuid=task_id, exception=exception, traceback=traceback)

    def rejected(self, task_id: str, requeue: bool = False) -> None:
        self.emit("task-rejected", uuid=task_id, requeue=requeue)

    def revoked(self, task_id: str, terminated: bool = False, signum: Any = None, expired: bool = False) -> None:
        self.emit("task-revoked", uuid=task_id, terminated=terminated, signum=signum, expired=expired)


# -- rendering (in the flusher thread) -------------------------------------------------

_BEGIN, _RECEIVED, _STARTED, _SUCCEEDED, _OTHER = range(5)
_str = encode_basestring_ascii  # a str as a JSON string literal (C)


def _val(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _str(value)  # type: ignore[no-any-return]
    return json.dumps(value, default=repr)


def _received(head: str, clock: int, ts: float, msg: TaskMessage) -> str:
    h = msg.headers
    return (f'{head}{clock}, "uuid": {_str(msg.id)}, "name": {_str(msg.task)}, "args": {_val(msg.argsrepr)}, '
            f'"kwargs": {_val(msg.kwargsrepr)}, "root_id": {_val(msg.root_id)}, '
            f'"parent_id": {_val(msg.parent_id)}, "retries": {msg.retries}, "eta": {_val(h.get("eta"))}, '
            f'"expires": {_val(h.get("expires"))}, "timestamp": {ts!r}, "type": "task-received"}}')


def _started(head: str, clock: int, ts: float, task_id: str) -> str:
    return f'{head}{clock}, "uuid": {_str(task_id)}, "timestamp": {ts!r}, "type": "task-started"}}'


def _render_other(head: str, item: tuple[Any, ...]) -> list[str]:
    _, clock, ts, type_, fields = item
    inner = json.dumps(fields, default=repr)[1:-1]
    return [f'{head}{clock}, {inner}{", " if inner else ""}"timestamp": {ts!r}, "type": {_str(type_)}}}']


_RENDER: dict[int, Callable[[str, tuple[Any, ...]], list[str]]] = {
    _BEGIN: lambda head, i: [_received(head, i[1], i[2], i[3]), _started(head, i[1] + 1, i[2], i[3].id)],
    _RECEIVED: lambda head, i: [_received(head, i[1], i[2], i[3])],
    _STARTED: lambda head, i: [_started(head, i[1], i[2], i[3])],
    _SUCCEEDED: lambda head, i: [f'{head}{i[1]}, "uuid": {_str(i[3])}, "result": {_str(i[4])}, '
                                 f'"runtime": {float(i[5])!r}, "timestamp": {i[2]!r}, "type": "task-succeeded"}}'],
    _OTHER: _render_other,
}


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
