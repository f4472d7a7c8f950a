"""The worker's control thread: reads broadcast commands and runs them on the live worker.

One thread in the worker's main process subscribes to the broker's broadcast
channel (``celery.pidbox``), runs each command addressed to this node (see
``commands.py``) and sends the reply when one is asked for.  Commands that
change the prefork pool (grow, shrink, terminate, shutdown) are handed to the
supervisor's own thread (``Supervisor.calls``); revocations and task limits
reach the processes that run tasks through a shared ``ControlState``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..worker.control_state import ControlState
from . import wire
from .commands import COMMANDS

if TYPE_CHECKING:
    from ..worker.worker import Worker

logger = logging.getLogger("celeriac.control")
POLL = 0.5  # seconds between checks that the worker is still running


class ControlServer:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.broker = worker.app.broker
        sup = worker.supervisor
        self.state: ControlState = sup.control if sup is not None else ControlState()
        if sup is None:
            for loop in worker.loops:
                loop.consumer.control = self.state
        self.channel, self.reply_exchange = wire.exchange_names(self.app.conf.control_exchange or "celery")
        self.revoked: set[str] = set()
        self.clock = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._sub: Any = None
        self.thread = threading.Thread(target=self._run, name="celeriac-control", daemon=True)

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        try:
            self._subscribe()
        except Exception as exc:  # retried in the thread
            logger.warning("Remote control: cannot subscribe to %s yet: %r", self.channel, exc)
        try:
            self.revoked.update(self.broker.load_revoked())
        except Exception as exc:
            logger.warning("Cannot load revoked task ids from the broker: %r", exc)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.worker._stop.is_set()

    def _subscribe(self) -> None:
        if self._sub is None:
            self._sub = self.broker.subscribe_broadcast(self.channel)

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stopping():
                try:
                    self._subscribe()
                    messages = self._sub.get(POLL)
                    backoff = 0.0
                except Exception as exc:
                    backoff = min(backoff * 2 or 0.5, 10.0)
                    logger.error("Remote control: broker error, retrying in %.1fs: %r", backoff, exc)
                    self._close_sub()
                    self._stop.wait(backoff)
                    continue
                for raw in messages:
                    self.handle(raw)
        finally:
            self._close_sub()

    def _close_sub(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                sub.close()
            except Exception:
                pass

    # -- one request -----------------------------------------------------------
    def handle(self, raw: bytes) -> None:
        request = wire.parse_request(raw)
        if request is None:
            logger.warning("Remote control: ignoring an undecodable request: %r", raw[:200])
            return
        if not wire.matches(request, self.hostname):
            return
        self.clock += 1
        method = request["method"]
        arguments = request.get("arguments") or {}
        entry = COMMANDS.get(method)
        if entry is None:
            value: Any = {"error": f"No such method: {method}"}
        else:
            try:
                value = entry(self, **arguments)
            except Exception as exc:
                logger.exception("Remote control command %s failed", method)
                value = {"error": repr(exc)}
        reply_to, ticket = request.get("reply_to"), request.get("ticket")
        if ticket and isinstance(reply_to, dict) and reply_to.get("routing_key"):
            queue = wire.reply_queue(reply_to["routing_key"], reply_to.get("exchange") or self.reply_exchange)
            try:
                self.broker.reply(queue, wire.reply_body(self.hostname, value), ticket)
            except Exception as exc:
                logger.error("Remote control: cannot reply to %s: %r", method, exc)

    # -- what commands use -----------------------------------------------------
    @property
    def pool(self) -> str:
        return self.worker.pool

    def in_pool_thread(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` where the pool is managed: the supervisor's thread in prefork, here else."""
        sup = self.worker.supervisor
        if sup is not None:
            sup.calls.put(fn)
        else:
            fn()

    def revoke(self, task_ids: list[str], persist: bool = True) -> None:
        new = [t for t in task_ids if t not in self.revoked]
        self.revoked.update(task_ids)
        if persist:
            try:
                self.broker.store_revoked(task_ids, wire.REVOKE_EXPIRES)
            except Exception as exc:  # the ids still travel in the shared state
                logger.error("Cannot store revoked ids in the broker: %r", exc)
        if new or persist:
            self.state.add_revoked(list(task_ids))

    def known_revoked(self) -> set[str]:
        """The revoked ids not yet expired (the broker's store drops old ones)."""
        try:
            self.revoked = set(self.broker.load_revoked()).union(self.state.recent)
        except Exception as exc:
            logger.warning("Cannot load revoked task ids from the broker: %r", exc)
        return self.revoked

    def pid(self) -> int:
        return os.getpid()


def start_control_server(worker: Worker) -> ControlServer | None:
    """Called by ``Worker`` once its pool runs.  Brokers without broadcast get no control thread."""
    broker = worker.app.broker
    if not getattr(broker.capabilities, "broadcast", False):
        logger.warning("Remote control is off: %s has no broadcast", type(broker).__name__)
        return None
    server = ControlServer(worker)
    server.start()
    worker.control = server  # type: ignore[attr-defined]
    return server
