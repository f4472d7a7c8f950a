"""The worker's own events, from its main process: worker-online, a worker-heartbeat
every ``freq`` seconds, worker-offline (celery-wire.md 4.3).

Monitors (Flower, ``celery events``) consider a worker alive while its last
heartbeat is less than ``2 x freq`` old, so these are sent whether or not task
events are on (as Celery does).  The counts come from the pool: the
supervisor's slots in prefork, the work loops otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from . import HEARTBEAT_FREQ, SOFTWARE_INFO, Clock, Event, encode, routing_key_for
from .dispatcher import Transport, _Warner, install, task_events

if TYPE_CHECKING:
    from ..worker.worker import Worker

logger = logging.getLogger("celeriac.events")


def pool_counts(worker: Worker) -> tuple[int, int]:
    """``(active, processed)``: tasks running now, tasks done since the worker started."""
    sup = worker.supervisor
    if sup is not None:
        for _ in range(5):  # the supervisor's thread may change the dict meanwhile
            try:
                children = list(sup.children.values())
                break
            except RuntimeError:
                continue
        else:
            children = []
        active = sum(1 for c in children if c.slot.running() is not None)
        return active, sup.processed + sum(c.slot.done for c in children)
    active = processed = 0
    for loop in list(worker.loops):
        processed += int(getattr(loop, "processed", 0))
        running = getattr(loop, "running", None)  # the asyncio pool: task id -> run
        if isinstance(running, dict):
            active += len(running)
        elif getattr(loop.consumer, "running", None):
            active += 1
    return active, processed


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


class WorkerEvents:
    """Made by ``Worker.start`` before the pool forks (it installs the task-events switch)."""

    def __init__(self, worker: Worker, freq: float = HEARTBEAT_FREQ) -> None:
        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.freq = float(freq)
        self.flag = install(self.hostname, bool(worker.events))
        self.transport = Transport(self.app)
        self.clock = Clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._online = False
        self._warn = _Warner()

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """worker-online, then a heartbeat every ``freq`` seconds."""
        self._online = True
        self.send("worker-online")
        self._thread = threading.Thread(target=self._beat, name="celeriac-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        due = time.monotonic() + self.freq
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.send("worker-heartbeat")
            due += self.freq
            now = time.monotonic()
            if due < now:  # we fell behind (a stopped process): no burst of catch-up beats
                due = now + self.freq

    def stop(self) -> None:
        """Send what task events this process holds, then worker-offline."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        try:
            task_events(self.app, self.hostname).close()
        except Exception as exc:
            logger.warning("Could not flush task events: %r", exc)
        if self._online:
            self._online = False
            self.send("worker-offline")

    # -- sending -------------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        active, processed = pool_counts(self.worker)
        return {"freq": self.freq, "active": active, "processed": processed, "loadavg": _loadavg(),
                **SOFTWARE_INFO}

    def send(self, type_: str, **fields: Any) -> None:
        try:
            body = fields or self.fields()
            with self._lock:  # one clock, in order
                event = Event(type_, self.hostname, self.clock.forward(), **body)
                self.transport.publish(routing_key_for(type_), encode(event), self.hostname)
        except Exception as exc:
            self._warn(type_, exc)

    def heartbeat_now(self) -> None:
        """The ``heartbeat`` control command (sent by monitors when they start): as Celery
        answers it, ``freq`` 5 and the software fields only."""
        self.transport.refresh_listeners()
        self.send("worker-heartbeat", freq=5, **SOFTWARE_INFO)

    def enable(self) -> None:
        self.flag.value = 1
        self.worker.events = True

    def disable(self) -> None:
        self.flag.value = 0
        self.worker.events = False
