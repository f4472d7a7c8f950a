"""A monitor's picture built from events: ``app.events.State()``, a small cousin of Celery's.

Feed it every event (``state.event(event)``, e.g. as a receiver's ``'*'``
handler) and read ``state.workers`` (node name -> :class:`Worker`, alive while
its last heartbeat is younger than ``2 x freq``) and ``state.tasks`` (task id
-> :class:`Task`, with its state and the fields of its events; the oldest are
forgotten beyond ``max_tasks_in_memory``).

Events can arrive out of order (task events of one process are batched; the
client's ``task-sent`` comes on another path): a late event of a state that
logically comes earlier (``task-received`` after ``task-succeeded``) only fills
fields still unknown, it never moves the state back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .. import states

HEARTBEAT_EXPIRE_WINDOW = 2.0   # a worker is offline after this many ``freq`` without a heartbeat
HEARTBEATS_KEPT = 4

TASK_EVENT_TO_STATE = {
    "sent": states.PENDING, "received": states.RECEIVED, "started": states.STARTED,
    "succeeded": states.SUCCESS, "failed": states.FAILURE, "retried": states.RETRY,
    "revoked": states.REVOKED, "rejected": states.REJECTED,
}
_COMMON = ("hostname", "utcoffset", "pid", "clock", "timestamp", "type", "local_received", "uuid", "state",
           "worker")


class Worker:
    """One node, as its worker events describe it."""

    def __init__(self, hostname: str, **fields: Any) -> None:
        self.hostname = hostname
        self.pid: int | None = None
        self.freq = 2.0
        self.heartbeats: list[float] = []
        self.clock = 0
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.last_event: str | None = None
        self.update(fields)

    def update(self, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key not in ("hostname", "type", "timestamp", "local_received", "utcoffset"):
                setattr(self, key, value)

    def event(self, type_: str, timestamp: float | None, local_received: float | None,
              fields: dict[str, Any]) -> None:
        self.last_event = type_
        if type_ == "offline":
            self.heartbeats = []
            return
        self.update(fields)
        beat = local_received or timestamp
        if beat:
            self.heartbeats.append(float(beat))
            self.heartbeats.sort()
            del self.heartbeats[:-HEARTBEATS_KEPT]

    @property
    def heartbeat_expires(self) -> float:
        last = self.heartbeats[-1] if self.heartbeats else 0.0
        return last + float(self.freq or 2.0) * HEARTBEAT_EXPIRE_WINDOW

    @property
    def alive(self) -> bool:
        return bool(self.heartbeats) and time.time() < self.heartbeat_expires

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    @property
    def id(self) -> str:
        return self.hostname

    def as_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "pid": self.pid, "freq": self.freq, "heartbeats": list(self.heartbeats),
                "clock": self.clock, "active": self.active, "processed": self.processed, "loadavg": self.loadavg,
                "sw_ident": self.sw_ident, "sw_ver": self.sw_ver, "sw_sys": self.sw_sys, "alive": self.alive}

    def __repr__(self) -> str:
        return f"<Worker: {self.hostname} ({self.status_string}, clock {self.clock})>"


class Task:
    """One task, as its events describe it."""

    FIELDS = ("name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires", "result",
              "exception", "traceback", "runtime", "exchange", "routing_key", "queue", "requeue",
              "terminated", "signum", "expired")
    name: str | None
    args: str | None
    kwargs: str | None
    result: str | None
    exception: str | None
    traceback: str | None
    runtime: float | None
    retries: int | None
    received: float | None
    started: float | None
    succeeded: float | None
    failed: float | None

    def __init__(self, uuid: str, **fields: Any) -> None:
        self.uuid = uuid
        self.state = states.PENDING
        self.timestamp: float | None = None
        self.hostname: str | None = None
        self.worker: Worker | None = None
        self.clock = 0
        for key in self.FIELDS:
            setattr(self, key, None)
        for key in TASK_EVENT_TO_STATE:
            setattr(self, key, None)  # time of each event: received, started, succeeded, ...
        for key, value in fields.items():
            setattr(self, key, value)

    def event(self, type_: str, timestamp: float | None, fields: dict[str, Any]) -> None:
        state = TASK_EVENT_TO_STATE.get(type_)
        if type_ in TASK_EVENT_TO_STATE:
            setattr(self, type_, timestamp)
        data = {k: v for k, v in fields.items() if k not in _COMMON}
        # (REJECTED ranks below RECEIVED in Celery's precedence, yet it ends a task here)
        late = (state is not None and state not in (states.RETRY, states.REJECTED)
                and self.state != states.RETRY and states.precedence(state) > states.precedence(self.state))
        if late:  # it happened before what we know: only fill the gaps
            for key, value in data.items():
                if getattr(self, key, None) is None:
                    setattr(self, key, value)
            return
        for key, value in data.items():
            setattr(self, key, value)
        if state is not None:
            self.state = state
            self.timestamp = timestamp

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uuid": self.uuid, "state": self.state, "timestamp": self.timestamp,
                               "hostname": self.hostname, "clock": self.clock}
        for key in (*self.FIELDS, *TASK_EVENT_TO_STATE):
            out[key] = getattr(self, key)
        out["worker"] = self.worker.hostname if self.worker is not None else None
        return out

    def __repr__(self) -> str:
        return f"<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>"


class State:
    """Workers and tasks as the events seen so far describe them (thread-safe)."""

    def __init__(self, callback: Callable[[State, dict[str, Any]], Any] | None = None,
                 max_workers_in_memory: int = 5000, max_tasks_in_memory: int = 10000,
                 on_node_join: Callable[[Worker], Any] | None = None,
                 on_node_leave: Callable[[Worker], Any] | None = None, **kwargs: Any) -> None:
        self.callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.event_count = 0
        self.task_count = 0
        self._lock = threading.RLock()

    # -- feeding ------------------------------------------------------------------
    def event(self, event: dict[str, Any]) -> tuple[Any, bool]:
        """Apply one event; returns ``(worker or task, created)`` (``(None, False)`` if ignored)."""
        with self._lock:
            self.event_count += 1
            result = self._event(event)
        if self.callback is not None:
            self.callback(self, event)
        return result

    __call__ = event

    def _event(self, event: dict[str, Any]) -> tuple[Any, bool]:
        type_ = event.get("type")
        if not isinstance(type_, str):
            return None, False
        group, _, action = type_.partition("-")
        hostname = event.get("hostname")
        timestamp = event.get("timestamp")
        if group == "worker" and isinstance(hostname, str):
            worker, created = self.get_or_create_worker(hostname)
            was_alive = worker.alive
            worker.event(action, timestamp, event.get("local_received"), event)
            if not was_alive and worker.alive and self.on_node_join is not None:
                self.on_node_join(worker)
            elif action == "offline" and self.on_node_leave is not None:
                self.on_node_leave(worker)
            return worker, created
        if group == "task" and isinstance(event.get("uuid"), str):
            task, created = self.get_or_create_task(event["uuid"])
            if created:
                self.task_count += 1
            if isinstance(hostname, str) and action != "sent":
                task.hostname = hostname
                task.worker = self.get_or_create_worker(hostname)[0]
            clock = event.get("clock")
            if isinstance(clock, int) and clock > task.clock:
                task.clock = clock
            task.event(action, timestamp, event)
            return task, created
        return None, False

    def get_or_create_worker(self, hostname: str, **fields: Any) -> tuple[Worker, bool]:
        with self._lock:
            worker = self.workers.get(hostname)
            if worker is not None:
                worker.update(fields)
                return worker, False
            worker = self.workers[hostname] = Worker(hostname, **fields)
            while len(self.workers) > self.max_workers_in_memory:
                self.workers.popitem(last=False)
            return worker, True

    def get_or_create_task(self, uuid: str) -> tuple[Task, bool]:
        with self._lock:
            task = self.tasks.get(uuid)
            if task is not None:
                self.tasks.move_to_end(uuid)
                return task, False
            task = self.tasks[uuid] = Task(uuid)
            while len(self.tasks) > self.max_tasks_in_memory:
                self.tasks.popitem(last=False)
            return task, True

    # -- reading ----------------------------------------------------------------------
    def alive_workers(self) -> list[Worker]:
        with self._lock:
            return [w for w in self.workers.values() if w.alive]

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        with self._lock:
            items = list(self.tasks.items())
        for i, item in enumerate(reversed(items)):  # newest first
            if limit is not None and i >= limit:
                return
            yield item

    def tasks_by_type(self, name: str, limit: int | None = None) -> list[tuple[str, Task]]:
        return [(u, t) for u, t in self.itertasks() if t.name == name][:limit]

    def tasks_by_worker(self, hostname: str, limit: int | None = None) -> list[tuple[str, Task]]:
        return [(u, t) for u, t in self.itertasks() if t.hostname == hostname][:limit]

    def task_types(self) -> list[str]:
        with self._lock:
            return sorted({t.name for t in self.tasks.values() if t.name})

    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for t in self.tasks.values():
                out[t.state] = out.get(t.state, 0) + 1
        return out

    def clear(self) -> None:
        with self._lock:
            self.workers.clear()
            self.tasks.clear()
            self.event_count = self.task_count = 0

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={self.task_count}>"
