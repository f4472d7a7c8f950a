"""What a worker's control thread tells the processes and threads that run tasks.

The control thread (``celeriac.control.server``) runs in the worker's main
process; prefork children are forked before it starts.  They share a
:class:`ControlState` made before the fork: a generation counter and a small
JSON document (task attributes changed at run time, the latest revoked ids) in
shared memory.  Before each task a consumer compares the counter with the one
it last saw (one memory read); on a change it applies the document and re-reads
the revoked ids persisted in the broker.

``revoke(terminate=True)`` in prefork: the control thread writes the task id
into the child's slot and signals the child; the child's handler (installed by
:func:`install_child_handlers`) lets the signal kill it when the id is still
the task it runs.  The supervisor then records REVOKED (``TaskRevokedError``)
for it instead of ``WorkerLostError``, and starts a new process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from .. import signals, states
from ..exceptions import BackendDisabled, TaskRevokedError
from ..protocol.results import exception_to_dict, make_meta
from .canvas_mw import finished_without_running

if TYPE_CHECKING:
    from ..app import Celery
    from ..brokers.base import Delivery
    from .consumer import Consumer
    from .loop import Slot, WorkLoop

logger = logging.getLogger("celeriac.worker")
SIZE = 256 * 1024
RECENT_REVOKED = 1000       # ids carried in the document itself (besides the broker's store)
TASK_ATTRS = ("rate_limit", "time_limit", "soft_time_limit")


class ControlState:
    def __init__(self) -> None:
        self.gen = multiprocessing.RawValue(ctypes.c_long, 0)
        self.buf = multiprocessing.RawArray(ctypes.c_char, SIZE)
        self._lock = threading.Lock()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.recent: list[str] = []

    # -- writer: the control thread ----------------------------------------------
    def set_task_attrs(self, name: str, **attrs: Any) -> None:
        with self._lock:
            self.tasks.setdefault(name, {}).update(attrs)
            self._publish()

    def add_revoked(self, task_ids: list[str]) -> None:
        with self._lock:
            self.recent = (self.recent + [t for t in task_ids if t not in self.recent])[-RECENT_REVOKED:]
            self._publish()

    def _publish(self) -> None:
        data = json.dumps({"tasks": self.tasks, "revoked": self.recent}).encode()
        while len(data) >= SIZE and self.recent:
            self.recent = self.recent[len(self.recent) // 2:]
            data = json.dumps({"tasks": self.tasks, "revoked": self.recent}).encode()
        # a seqlock: odd while writing, so a reader never uses a torn document
        self.gen.value += 1
        self.buf.value = data
        self.gen.value += 1

    # -- readers: consumers, before each task ------------------------------------
    def read(self) -> tuple[int, dict[str, Any]]:
        while True:
            g1 = self.gen.value
            if g1 % 2:
                continue
            raw = self.buf.value
            if self.gen.value == g1:
                return g1, json.loads(raw) if raw else {}

    def sync(self, consumer: Consumer) -> None:
        """Apply what changed since ``consumer`` last looked (cheap when nothing did)."""
        if self.gen.value == consumer.control_gen:
            return
        gen, doc = self.read()
        first = consumer.control_gen < 0
        consumer.control_gen = gen
        tasks = consumer.app.tasks
        for name, attrs in doc.get("tasks", {}).items():
            task = tasks.get(name)
            if task is not None:
                for key, value in attrs.items():
                    if key in TASK_ATTRS:
                        setattr(task, key, value)
        recent = doc.get("revoked", ())
        try:
            # the broker's store drops expired ids, so the set does not grow for ever
            consumer.revoked = set(consumer.broker.load_revoked()).union(recent)
        except Exception as exc:  # the broker is down: the ids carried in the document still apply
            consumer.revoked.update(recent)
            if first:
                logger.warning("Cannot load revoked task ids from the broker: %r", exc)


# -- prefork children ------------------------------------------------------------

def install_child_handlers(slot: Slot, loop: WorkLoop) -> None:
    """SIGTERM: stop after the current task, unless the control thread asked to terminate
    the task running now (then die of the signal).  SIGINT: ignored unless so asked."""

    def handler(signum: int, frame: Any) -> None:
        target = slot.term.value
        running = slot.running()
        if target and running is not None and running[0].encode() == target:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGTERM:
            loop.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def record_terminated(app: Celery, delivery: Delivery, running: tuple[Any, ...], signum: int) -> None:
    """The child running ``delivery`` was killed by ``revoke(terminate=True)``: REVOKED, acked."""
    task_id, name = running[0], running[1]
    logger.warning("Terminated task %s[%s] (signal %s)", name, task_id, signum)
    try:
        app.backend.store_meta(make_meta(task_id, states.REVOKED,
                                         exception_to_dict(TaskRevokedError("terminated")), None, ready=True))
    except BackendDisabled:
        pass
    except Exception as exc:
        logger.error("Could not store the REVOKED state of %s: %r", task_id, exc)
    finished_without_running(app, delivery.envelope, states.REVOKED, TaskRevokedError("terminated"))
    if signals.task_revoked.receivers:
        from ..task import Context
        signals.task_revoked.send(sender=app.tasks.get(name), request=Context(id=task_id, task=name),
                                  terminated=True, signum=signum, expired=False)
    delivery.ack()
