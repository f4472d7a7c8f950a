"""Fetching: leases batches from the broker, bounded by free capacity, and turns
deliveries into runnable requests.  Bad messages never reach an executor: they
are dead-lettered with the reason, and their result records the failure."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .. import signals, states
from ..brokers.base import Delivery
from ..exceptions import (
    BackendDisabled,
    ContentDisallowed,
    DecodeError,
    InvalidTaskError,
    NotRegistered,
    TaskRevokedError,
)
from ..protocol import codecs
from ..protocol.message import TaskMessage, decode_task_message
from ..protocol.results import exception_to_dict, make_meta
from .canvas_mw import finished_without_running

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Task

logger = logging.getLogger("celeriac.worker")


class Consumer:
    """One consumer id; one ``fetch`` round trip per batch; a heartbeat thread renews leases."""

    def __init__(self, app: Celery, queues: Sequence[str], consumer_id: str, hostname: str,
                 heartbeat_interval: float | None = None) -> None:
        self.app = app
        self.broker = app.broker
        self.queues = list(queues)
        self.consumer_id = consumer_id
        self.hostname = hostname
        self.accept = codecs.accept_set(app.conf.accept_content)
        self.running: list[Delivery] = []       # started, not yet acked
        self.revoked: set[str] = set()
        self.control: Any = None  # worker/control_state.ControlState: revocations, task limits
        self.control_gen = -1
        self.events: Any = None  # events/dispatcher.py TaskEvents of this process (set by the loop)
        lease = self.broker.lease_seconds
        self.heartbeat_interval = heartbeat_interval or max(min(lease / 3.0, 5.0), 0.05)
        self._stop = threading.Event()
        self._hb: threading.Thread | None = None
        self._hb_lock = threading.Lock()

    # -- heartbeat -------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._hb.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                with self._hb_lock:
                    running = list(self.running)
                self.broker.heartbeat(self.consumer_id, running)
            except Exception as exc:  # broker down: keep trying, leases may lapse
                logger.warning("Heartbeat to the broker failed: %r", exc)

    def stop(self) -> None:
        self._stop.set()

    def mark_running(self, delivery: Delivery | None) -> None:
        # one rebinding of a list never mutated afterwards: the heartbeat thread's copy
        # sees either the old or the new one, so no lock is needed
        self.running = [delivery] if delivery is not None else []

    # -- fetching --------------------------------------------------------------
    def fetch(self, capacity: int, timeout: float, settle: Any = None) -> list[Delivery]:
        if settle is not None:
            return self.broker.fetch(self.queues, capacity, timeout, self.consumer_id,  # type: ignore[call-arg]
                                     settle=settle)
        return self.broker.fetch(self.queues, capacity, timeout, self.consumer_id)

    def prepare(self, delivery: Delivery) -> tuple[TaskMessage, Task[Any, Any]] | None:
        """Decode and validate a delivery; returns None when it was handled here."""
        env = delivery.envelope
        try:
            msg = decode_task_message(env, self.accept)
        except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:
            task_id = env.headers.get("id")
            name = env.headers.get("task")
            logger.error("Bad message %s[%s] dead-lettered: %s", name, task_id, exc)
            self._dead(delivery, f"{type(exc).__name__}: {exc}", task_id, exc)
            if task_id and self.events is not None:
                self.events.rejected(task_id, False)
            if signals.task_rejected._receivers:
                signals.task_rejected.send(sender=None, message=env, exc=exc)
            return None
        try:
            task = self.app.tasks[msg.task]
        except NotRegistered as exc:
            logger.error("Received unregistered task of type %r.\nThe message has been dead-lettered "
                         "and its result set to FAILURE.\n%s", msg.task, exc)
            if signals.task_unknown._receivers:
                signals.task_unknown.send(sender=None, message=msg, exc=exc, name=msg.task, id=msg.id)
            self._dead(delivery, f"NotRegistered: {msg.task}", msg.id, exc)
            if self.events is not None:
                self.events.failed(msg.id, f"NotRegistered({msg.task!r})")
            return None
        if logger.isEnabledFor(logging.INFO):
            logger.info("Received task: %s[%s]", msg.shadow or msg.task, msg.id)
        if signals.task_received._receivers:
            signals.task_received.send(sender=self, request=msg)
        now = datetime.now(timezone.utc) if msg.expires is not None or msg.eta is not None else None
        if msg.expires is not None and now is not None and msg.expires <= now:
            logger.info("Discarding expired task %s[%s] (expired at %s)", msg.task, msg.id, msg.expires)
            self._store([make_meta(msg.id, states.REVOKED,
                                   exception_to_dict(TaskRevokedError("expired")), ready=True)])
            finished_without_running(self.app, msg, states.REVOKED, TaskRevokedError("expired"))
            if signals.task_revoked._receivers:
                signals.task_revoked.send(sender=task, request=msg, terminated=False, signum=None, expired=True)
            if self.events is not None:
                self.events.revoked(msg.id, expired=True)
            delivery.ack()
            return None
        if self.control is not None:
            self.control.sync(self)
        if msg.id in self.revoked:
            logger.info("Discarding revoked task: %s[%s]", msg.task, msg.id)
            self._store([make_meta(msg.id, states.REVOKED,
                                   exception_to_dict(TaskRevokedError("revoked")), ready=True)])
            finished_without_running(self.app, msg, states.REVOKED, TaskRevokedError("revoked"))
            if signals.task_revoked._receivers:
                signals.task_revoked.send(sender=task, request=msg, terminated=False, signum=None, expired=False)
            if self.events is not None:
                self.events.revoked(msg.id)
            delivery.ack()
            return None
        if msg.eta is not None and now is not None and msg.eta > now:
            # A Celery client put an ETA message straight on the queue: it waits in the broker.
            delivery.requeue(delay=(msg.eta - now).total_seconds())
            return None
        return msg, task

    def _dead(self, delivery: Delivery, reason: str, task_id: str | None, exc: BaseException) -> None:
        delivery.reject(reason)
        if task_id:
            self._store([make_meta(task_id, states.FAILURE, exception_to_dict(exc), None, ready=True)])

    def _store(self, metas: list[dict[str, Any]]) -> None:
        try:
            self.app.backend.store_metas(metas)
        except BackendDisabled:
            pass  # no result backend configured
        except Exception as exc:
            logger.error("Could not store results: %r", exc)


def wait_interval(started: float, idle: float = 1.0) -> float:
    return max(0.0, idle - (time.monotonic() - started))
