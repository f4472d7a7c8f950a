"""Celery's monitoring events (celery-wire.md section 4), transport-neutral parts.

An event is a flat JSON object: ``type`` (``worker-heartbeat``, ``task-succeeded``,
...), the fields every event carries (``hostname``, ``utcoffset``, ``pid``,
``clock``, ``timestamp``) and the fields of its type.  Workers send worker events
one by one on routing key ``worker.<action>``; task events are buffered and sent
as a JSON array on ``task.multi``.  How the bytes travel is the business of
``dispatcher.py`` (Redis pub/sub, or the broker's broadcast elsewhere).

``app.events`` is an :class:`Events` (``Receiver``, ``State``, ``Dispatcher``),
as in Celery.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from ..app import Celery
    from .dispatcher import EventDispatcher
    from .receiver import EventReceiver
    from .state import State

EXCHANGE = "celeryev"
TASK_MULTI = "task.multi"
HEARTBEAT_FREQ = 2.0            # seconds between worker-heartbeats (Celery's default)
SOFTWARE_INFO = {"sw_ident": "celeriac", "sw_ver": __version__, "sw_sys": platform.system()}


def utcoffset() -> float:
    """Hours *west* of UTC now, as Celery 5.7 sends it (``time.timezone / 3600``, the DST
    offset while DST is in effect)."""
    return (time.altzone if time.localtime().tm_isdst > 0 else time.timezone) / 3600


def adjust_timestamp(ts: float, offset: float, here: Callable[[], float] = utcoffset) -> float:
    """A sender's ``timestamp`` in the receiver's terms (Celery receivers do the same)."""
    return ts - (offset - here()) * 3600


def routing_key_for(type_: str) -> str:
    """``worker-heartbeat`` -> ``worker.heartbeat``."""
    return type_.replace("-", ".")


def group_from(type_: str) -> str:
    """``task-succeeded`` -> ``task``."""
    return type_.split("-", 1)[0]


def client_hostname() -> str:
    """What a client (not a worker) calls itself in events: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


class Clock:
    """A Lamport clock: ``forward()`` per event sent; ``adjust(other)`` on receipt."""

    def __init__(self, value: int = 0) -> None:
        self._counter = itertools.count(value + 1)
        self.value = value

    def forward(self) -> int:
        self.value = next(self._counter)  # next() on a count is atomic in CPython
        return self.value

    def adjust(self, other: int) -> int:
        if other > self.value:
            self._counter = itertools.count(other + 2)
            self.value = other + 1
        return self.value


def Event(type_: str, hostname: str, clock: int, pid: int | None = None, offset: float | None = None,
          timestamp: float | None = None, **fields: Any) -> dict[str, Any]:
    """One event, its keys in the order Celery sends them (4.2 fields, the type's, then
    ``timestamp`` and ``type``)."""
    event: dict[str, Any] = {"hostname": hostname, "utcoffset": utcoffset() if offset is None else offset,
                             "pid": os.getpid() if pid is None else pid, "clock": clock}
    event.update(fields)
    event["timestamp"] = time.time() if timestamp is None else timestamp
    event["type"] = type_
    return event


def encode(payload: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    return json.dumps(payload, default=repr).encode("utf-8")


def decode(raw: bytes | str) -> list[dict[str, Any]]:
    """The events in one message body: an object, or an array of them (``task.multi``)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return []
    items = data if isinstance(data, list) else [data]
    return [e for e in items if isinstance(e, dict) and isinstance(e.get("type"), str)]


def localize(event: dict[str, Any], received: float | None = None) -> dict[str, Any]:
    """Shift ``timestamp`` into this host's terms and add ``local_received``."""
    ts, offset = event.get("timestamp"), event.get("utcoffset")
    if isinstance(ts, (int, float)) and isinstance(offset, (int, float)):
        event["timestamp"] = adjust_timestamp(ts, offset)
    event["local_received"] = time.time() if received is None else received
    return event


class Events:
    """``app.events``: the receiver, state and dispatcher classes bound to ``app``."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def Receiver(self, connection: Any = None, handlers: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
                 routing_key: str = "#", node_id: str | None = None, app: Celery | None = None,
                 **kwargs: Any) -> EventReceiver:
        from .receiver import EventReceiver
        return EventReceiver(connection, handlers=handlers, routing_key=routing_key, node_id=node_id,
                             app=app or self.app, **kwargs)

    def Dispatcher(self, connection: Any = None, hostname: str | None = None, enabled: bool = True,
                   **kwargs: Any) -> EventDispatcher:
        from .dispatcher import EventDispatcher
        return EventDispatcher(self.app, hostname=hostname, enabled=enabled, **kwargs)

    def State(self, **kwargs: Any) -> State:
        from .state import State
        return State(**kwargs)

    def itercapture(self, limit: int | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Events as they arrive (a shortcut for ``Receiver().itercapture``)."""
        return self.Receiver().itercapture(limit=limit, timeout=timeout)


__all__ = ["EXCHANGE", "HEARTBEAT_FREQ", "SOFTWARE_INFO", "TASK_MULTI", "Clock", "Event", "Events",
           "adjust_timestamp", "decode", "encode", "group_from", "localize", "routing_key_for", "utcoffset"]
