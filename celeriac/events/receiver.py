"""Receiving events: ``app.events.Receiver(connection, handlers={...}).capture()``, as in Celery.

The receiver subscribes to the event exchange on the app's broker (Redis
pub/sub pattern ``<prefix>/<db>.celeryev/<routing key>``, or the broadcast
channel ``celeryev`` elsewhere), so it sees events sent from then on, by our
workers and, on Redis, by Celery's.  When it starts it sends the ``heartbeat``
control command so that the workers announce themselves at once.

Each event is handed to ``handlers[type]``, else to ``handlers['*']``, after its
``timestamp`` is shifted into this host's time (``localize``) and
``local_received`` is added.
"""

from __future__ import annotations

import fnmatch
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import Clock, decode, localize, routing_key_for
from .dispatcher import Transport

if TYPE_CHECKING:
    from ..app import Celery
    from ..brokers.base import Subscription

logger = logging.getLogger("celeriac.events")
POLL_SECONDS = 0.5   # how often a waiting receiver looks at ``should_stop``

Handler = Callable[[dict[str, Any]], Any]


class EventReceiver:
    """Calls ``handlers`` for the events sent while :meth:`capture` runs.

    ``connection`` may be a celeriac broker (else the app's broker is used);
    ``routing_key`` selects events as an AMQP topic pattern (``#``: all,
    ``task.#``, ``worker.*``).  Set ``should_stop = True`` (e.g. in a handler)
    to make ``capture`` return.
    """

    def __init__(self, channel: Any = None, handlers: dict[str, Handler] | None = None,
                 routing_key: str = "#", node_id: str | None = None, app: Celery | None = None,
                 queue_prefix: str | None = None, accept: Any = None, queue_ttl: float | None = None,
                 queue_expires: float | None = None, localize: bool = True) -> None:
        if app is None:
            from .._state import get_current_app
            app = get_current_app()
        self.app = app
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key or "#"
        self.node_id = node_id or str(uuid.uuid4())
        broker = channel if hasattr(channel, "subscribe_broadcast") else None
        self.transport = Transport(app, broker)
        self.localize = localize
        self.clock = Clock()
        self.should_stop = False
        self._pattern = None if self.routing_key == "#" else self.routing_key.replace("#", "*")
        self._sub: Subscription | None = None

    def subscribe(self) -> None:
        """Start listening now (``capture`` does it when not done yet): events sent from
        here on are kept for it."""
        if self._sub is None:
            self._sub = self.transport.subscribe(self.routing_key)

    # -- Celery's API --------------------------------------------------------------
    def process(self, type: str, event: dict[str, Any]) -> None:
        handler = self.handlers.get(type) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def capture(self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True) -> None:
        """Handle events until ``limit`` events were handled, ``should_stop`` is set, or
        (raising ``TimeoutError``, as Celery's raises ``socket.timeout``) no event came for
        ``timeout`` seconds."""
        for event in self.itercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            self.process(event["type"], event)

    def itercapture(self, limit: int | None = None, timeout: float | None = None,
                    wakeup: bool = True) -> Iterator[dict[str, Any]]:
        self.subscribe()
        sub = self._sub
        assert sub is not None
        try:
            if wakeup:
                self.wakeup_workers()
            count = 0
            idle_since = time.monotonic()
            while not self.should_stop:
                wait = POLL_SECONDS if timeout is None else max(0.01, min(POLL_SECONDS, timeout))
                raws = sub.get(wait)
                got = False
                for raw in raws:
                    for event in self.events_from_message(raw):
                        got = True
                        yield event
                        count += 1
                        if (limit and count >= limit) or self.should_stop:
                            return
                now = time.monotonic()
                if got:
                    idle_since = now
                elif timeout is not None and now - idle_since >= timeout:
                    raise TimeoutError(f"no event for {timeout} s")
        finally:
            self._sub = None
            _close(sub)

    def wakeup_workers(self, channel: Any = None) -> None:
        """Ask every worker for a heartbeat now (the ``heartbeat`` control command)."""
        try:
            self.app.control.broadcast("heartbeat")
        except Exception as exc:
            logger.debug("Could not wake the workers up: %r", exc)

    def events_from_message(self, raw: bytes) -> list[dict[str, Any]]:
        """The events in one message body (an object, or an array of task events)."""
        out = []
        now = time.time()
        for event in decode(raw):
            if self._pattern is not None and not fnmatch.fnmatchcase(routing_key_for(event["type"]),
                                                                     self._pattern):
                continue
            clock = event.get("clock")
            if isinstance(clock, int):
                self.clock.adjust(clock)
            out.append(localize(event, now) if self.localize else event)
        return out

    def event_from_message(self, body: Any, localize: bool = True) -> tuple[str, dict[str, Any]]:
        """Celery's single-event helper: ``(type, event)`` from a decoded body."""
        event = dict(body)
        if localize:
            from . import localize as _localize
            _localize(event)
        return event["type"], event

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.should_stop = True


def _close(sub: Subscription) -> None:
    try:
        sub.close()
    except Exception:
        pass
