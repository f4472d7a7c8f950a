"""``app.control``: broadcast commands to workers and collect their replies, as Celery does.

Replies are collected until none has come for ``timeout`` seconds (1 s by
default), or ``limit`` replies (``len(destination)`` when a destination list is
given) have arrived.  Each call reads its own reply queue, so replies never mix.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import wire

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.control")
Reply = dict[str, Any]


def flatten_reply(replies: Sequence[Reply]) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for item in replies:
        nodes.update(item)
    return nodes


class Inspect:
    """``app.control.inspect()``: inspect commands; each returns ``{node: value}`` or None."""

    def __init__(self, destination: Sequence[str] | str | None = None, timeout: float = 1.0,
                 callback: Callable[[Reply], Any] | None = None, connection: Any = None,
                 app: Celery | None = None, limit: int | None = None, pattern: str | None = None,
                 matcher: str | None = None) -> None:
        self.app = app
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.connection = connection
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _prepare(self, reply: list[Reply] | None) -> Any:
        if not reply:
            return None
        by_node = flatten_reply(reply)
        if self.destination and isinstance(self.destination, str):
            return by_node.get(self.destination)
        return by_node

    def _request(self, command: str, **kwargs: Any) -> Any:
        assert self.app is not None
        return self._prepare(self.app.control.broadcast(
            command, arguments=kwargs, destination=self.destination, reply=True, timeout=self.timeout,
            callback=self.callback, limit=self.limit, pattern=self.pattern, matcher=self.matcher))

    def report(self) -> Any:
        return self._request("report")

    def clock(self) -> Any:
        return self._request("clock")

    def active(self, safe: bool | None = None) -> Any:
        return self._request("active", safe=safe)

    def scheduled(self, safe: bool | None = None) -> Any:
        return self._request("scheduled")

    def reserved(self, safe: bool | None = None) -> Any:
        return self._request("reserved")

    def stats(self) -> Any:
        return self._request("stats")

    def revoked(self) -> Any:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> Any:
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def ping(self, destination: Sequence[str] | str | None = None) -> Any:
        if destination is not None:
            self.destination = destination
        return self._request("ping")

    def active_queues(self) -> Any:
        return self._request("active_queues")

    def query_task(self, *ids: Any) -> Any:
        if len(ids) == 1 and isinstance(ids[0], (list, tuple)):
            ids = tuple(ids[0])
        return self._request("query_task", ids=list(ids))

    def conf(self, with_defaults: bool = False) -> Any:
        return self._request("conf", with_defaults=with_defaults)

    def hello(self, from_node: str, revoked: Any = None) -> Any:
        return self._request("hello", from_node=from_node, revoked=revoked)


class Control:
    """``app.control``: remote control of workers over the broker's broadcast."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def inspect(self, destination: Sequence[str] | str | None = None, timeout: float = 1.0,
                callback: Callable[[Reply], Any] | None = None, connection: Any = None,
                app: Celery | None = None, limit: int | None = None, pattern: str | None = None,
                matcher: str | None = None) -> Inspect:
        return Inspect(destination, timeout, callback, connection, app or self.app, limit, pattern, matcher)

    # -- the primitive ---------------------------------------------------------
    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: Sequence[str] | str | None = None, connection: Any = None,
                  reply_to: Any = None, timeout: float = 1.0, limit: int | None = None,
                  callback: Callable[[Reply], Any] | None = None, channel: Any = None,
                  pattern: str | None = None, matcher: str | None = None, reply: bool = False,
                  **extra_kwargs: Any) -> list[Reply] | None:
        """Send ``command`` to every worker (or ``destination``); with ``reply=True``, collect
        and return the replies as a list of ``{node: value}``."""
        args = dict(arguments or {}, **extra_kwargs)
        dest = [destination] if isinstance(destination, str) else (list(destination) if destination else None)
        broker = self.app.broker
        channel_name, reply_exchange = wire.exchange_names(self.app.conf.control_exchange or "celery")
        if not reply:
            broker.broadcast(channel_name, wire.request_body(command, args, dest, pattern, matcher))
            return None
        oid = str(uuid.uuid4())
        ticket = str(uuid.uuid4())
        sub = broker.subscribe_replies(wire.reply_queue(oid, reply_exchange))
        try:
            body = wire.request_body(command, args, dest, pattern, matcher, ticket,
                                     {"exchange": reply_exchange, "routing_key": oid})
            broker.broadcast(channel_name, body, ttl=timeout)
            if limit is None and dest:
                limit = len(dest)
            replies: list[Reply] = []
            while True:
                got = sub.get(timeout)
                if not got:
                    break
                for raw in got:
                    try:
                        item = json.loads(raw)
                    except ValueError:
                        logger.warning("Ignoring an undecodable control reply: %r", raw[:200])
                        continue
                    if not isinstance(item, dict):
                        continue
                    if callback is not None:
                        callback(item)
                    replies.append(item)
                if limit and len(replies) >= limit:
                    break
            return replies
        finally:
            sub.close()

    # -- commands --------------------------------------------------------------
    def ping(self, destination: Sequence[str] | str | None = None, timeout: float = 1.0,
             **kwargs: Any) -> list[Reply]:
        """``[{'w1@host': {'ok': 'pong'}}, ...]`` for every worker that answered in time."""
        return self.broadcast("ping", reply=True, arguments={}, destination=destination,
                              timeout=timeout, **kwargs) or []

    def revoke(self, task_id: str | Sequence[str], destination: Sequence[str] | str | None = None,
               terminate: bool = False, signal: str | int | None = "SIGTERM", **kwargs: Any) -> Any:
        """Tell every worker to discard ``task_id`` (one id or a list); ``terminate=True`` also
        stops it when running (``signal``: 'SIGTERM', 'SIGKILL', ...).  Revoked ids are kept in
        the broker for three hours, so workers started later know them."""
        wire.signum(signal)  # an unknown signal name fails here, in the caller
        ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id]
        if destination is None:
            self.app.broker.store_revoked(ids, wire.REVOKE_EXPIRES)
        return self.broadcast("revoke", destination=destination, arguments={
            "task_id": ids if len(ids) != 1 else ids[0], "terminate": terminate,
            "signal": signal if signal is not None else "SIGTERM"}, **kwargs)

    def terminate(self, task_id: str | Sequence[str], destination: Sequence[str] | str | None = None,
                  signal: str | int = "SIGTERM", **kwargs: Any) -> Any:
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(self, task_name: str, rate_limit: str | float | None,
                   destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        """Set ``task_name``'s rate limit on the workers ('10/s', '100/m', '1000/h'; 0/None: off)."""
        from ..task import _parse_rate
        _parse_rate(rate_limit)  # a bad rate fails here, in the caller
        return self.broadcast("rate_limit", destination=destination,
                              arguments={"task_name": task_name, "rate_limit": rate_limit}, **kwargs)

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        from ..task import validate_time_limits
        validate_time_limits(task_name, hard, soft)
        return self.broadcast("time_limit", destination=destination,
                              arguments={"task_name": task_name, "hard": hard, "soft": soft}, **kwargs)

    def shutdown(self, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        """Warm shutdown of the workers: running tasks finish first."""
        return self.broadcast("shutdown", destination=destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("pool_grow", destination=destination, arguments={"n": n}, **kwargs)

    def pool_shrink(self, n: int = 1, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("pool_shrink", destination=destination, arguments={"n": n}, **kwargs)

    def autoscale(self, max: int, min: int, destination: Sequence[str] | str | None = None,
                  **kwargs: Any) -> Any:
        return self.broadcast("autoscale", destination=destination, arguments={"max": max, "min": min},
                              **kwargs)

    def heartbeat(self, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("heartbeat", destination=destination, **kwargs)

    def enable_events(self, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("enable_events", destination=destination, **kwargs)

    def disable_events(self, destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("disable_events", destination=destination, **kwargs)

    def add_consumer(self, queue: str, exchange: str | None = None, exchange_type: str = "direct",
                     routing_key: str | None = None, options: dict[str, Any] | None = None,
                     destination: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        return self.broadcast("add_consumer", destination=destination, arguments={
            "queue": queue, "exchange": exchange, "exchange_type": exchange_type,
            "routing_key": routing_key, **(options or {})}, **kwargs)

    def cancel_consumer(self, queue: str, destination: Sequence[str] | str | None = None,
                        **kwargs: Any) -> Any:
        return self.broadcast("cancel_consumer", destination=destination, arguments={"queue": queue}, **kwargs)

    def purge(self, connection: Any = None) -> int:
        """Delete every waiting message of the default queue; returns how many."""
        return int(self.app.broker.purge(self.app.conf.task_default_queue))

    discard_all = purge
