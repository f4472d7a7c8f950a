"""Remote control on Redis, exactly as kombu's pidbox lays it out (celery-wire.md 2.5, 5.4).

So ``celery inspect ping`` and Flower reach our workers, and our ``app.control``
reaches Celery workers.  Every key and channel is preceded by ``global_keyprefix``::

    /<db>.<exchange>                   pub/sub channel of a fanout exchange
                                       (requests: PUBLISH; workers: PSUBSCRIBE)
    _kombu.binding.reply.celery.pidbox set: "<oid>␆␖␆␖<oid>.reply.celery.pidbox" for
                                       each client waiting for replies
    _kombu.binding_deadlines           zset (kombu 5.7): exchange -> ms deadline
    <oid>.reply.celery.pidbox (+␆␖3/6/9) list: replies, LPUSHed by workers, BRPOPed
    celeriac.revoked                   zset: revoked task id -> expiry (unix time)

Requests and replies are kombu JSON envelopes with a base64 body; requests carry
``headers = {clock, expires}`` (a worker drops an expired one), replies
``headers = {ticket, clock}``.  A reply goes to the queue bound to the reply
exchange with the request's routing key, found with ``SMEMBERS`` as kombu does;
when no client has bound one, the reply is dropped (kombu does the same).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._resp import PubSub
from .base import Subscription

logger = logging.getLogger("celeriac.broker")
BINDING_KEY = "_kombu.binding."
BINDING_PERMANENT_KEY = "_kombu.binding_permanent."
BINDING_DEADLINES_KEY = "_kombu.binding_deadlines"
REVOKED_KEY = "celeriac.revoked"
BINDING_TTL_MS = 3600 * 1000  # kombu 5.7: max(2 x x-expires, 1 h)
MAX_BLOCK = 1.0               # seconds per blocking call (well under the socket timeout)


def _envelope(body: bytes, headers: dict[str, Any], delivery_mode: int, exchange: str,
              routing_key: str) -> str:
    return json.dumps({
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {"delivery_mode": delivery_mode,
                       "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })


def _open(raw: bytes | str) -> tuple[bytes, dict[str, Any]] | None:
    """(body, headers) of a kombu envelope; None when it is not one."""
    try:
        env = json.loads(raw)
        body = env["body"]
        if (env.get("properties") or {}).get("body_encoding") == "base64":
            data = base64.b64decode(body)
        else:
            data = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode()
        return data, env.get("headers") or {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("Ignoring a pidbox message that is not a kombu envelope: %r", exc)
        return None


class _PatternSubscription(Subscription):
    def __init__(self, broker: Any, pattern: str) -> None:
        self.broker = broker
        with broker._errors():
            self.pubsub = PubSub(broker.client)
            self.pubsub.psubscribe(pattern)

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        with self.broker._errors():
            while True:
                remaining = deadline - time.monotonic()
                wait = 0.0 if out else max(0.0, min(remaining, MAX_BLOCK))
                msg = self.pubsub.get_message(timeout=wait)
                if msg is None:
                    if out or remaining <= 0:
                        return out
                    continue
                if msg.get("type") not in ("pmessage", "message"):
                    continue
                opened = _open(msg["data"])
                if opened is None:
                    continue
                body, headers = opened
                expires = headers.get("expires")
                if expires and isinstance(expires, (int, float)) and expires < time.time():
                    continue  # the caller has stopped waiting for it
                out.append(body)

    def close(self) -> None:
        try:
            self.pubsub.punsubscribe()
            self.pubsub.close()
        except Exception:  # the connection may already be gone
            pass


class _ReplyQueue(Subscription):
    def __init__(self, broker: Any, queue: str, routing_key: str, exchange: str) -> None:
        self.broker = broker
        self.queue = queue
        self.member = f"{routing_key}{broker.sep}{broker.sep}{queue}"
        self.binding = broker._k(BINDING_KEY + exchange)
        self.keys = [broker.queue_key(queue, step) for step in broker.steps]
        with broker._errors():
            broker.client.pipeline([
                ("SADD", self.binding, self.member),
                ("ZADD", broker._k(BINDING_DEADLINES_KEY), "GT", int(time.time() * 1000) + BINDING_TTL_MS, exchange),
            ], transaction=True)

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        client = self.broker.client
        raws: list[Any] = []
        with self.broker._errors():
            while not raws:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                block = round(max(0.01, min(remaining, MAX_BLOCK)), 3)
                got = client.execute("BRPOP", *self.keys, block, block=block)
                if got is not None:
                    raws.append(got[1])
            for key in self.keys:  # whatever else is there already
                while (more := client.execute("RPOP", key)) is not None:
                    raws.append(more)
        out = []
        for raw in raws:
            opened = _open(raw)
            if opened is not None:
                out.append(opened[0])
        return out

    def close(self) -> None:
        b = self.broker
        try:
            with b._errors():
                b.client.pipeline([("SREM", self.binding, self.member), ("DEL", *self.keys)], transaction=True)
        except Exception as exc:
            logger.warning("Could not delete the reply queue %s: %r", self.queue, exc)


class RedisPidboxMixin:
    """Mixed into :class:`RedisBroker`: broadcast, replies and revoked ids."""

    client: Any
    prefix: str
    sep: str
    steps: tuple[int, ...]
    options: dict[str, Any]
    _conn: Any
    _pidbox_clock = 0

    if TYPE_CHECKING:  # provided by RedisBroker
        def _k(self, name: str) -> str: ...

        def _errors(self) -> Any: ...

        def queue_key(self, queue: str, step: int = 0) -> str: ...

    def _fanout_channel(self, exchange: str, routing_key: str = "") -> str:
        fanout = self.options.get("fanout_prefix", True)
        prefix = f"/{self._conn.db}." if fanout is True else (fanout or "")
        return self.prefix + prefix + exchange + (f"/{routing_key}" if routing_key else "")

    def _tick(self) -> int:
        self._pidbox_clock += 1
        return self._pidbox_clock

    # -- broadcast ---------------------------------------------------------------------
    def broadcast(self, channel: str, payload: bytes, ttl: float | None = None) -> None:
        expires = time.time() + ttl if ttl else 0
        env = _envelope(payload, {"clock": self._tick(), "expires": expires}, 2, channel, "")
        with self._errors():
            self.client.execute("PUBLISH", self._fanout_channel(channel), env)

    def subscribe_broadcast(self, channel: str) -> Subscription:
        return _PatternSubscription(self, self._fanout_channel(channel).replace("#", "*"))

    # -- replies -------------------------------------------------------------------------
    @staticmethod
    def _split_reply_queue(queue: str) -> tuple[str, str]:
        """``<oid>.reply.celery.pidbox`` -> (``<oid>``, ``reply.celery.pidbox``)."""
        routing_key, _, exchange = queue.partition(".")
        return routing_key, exchange

    def reply(self, queue: str, payload: bytes, ticket: str | None = None) -> None:
        routing_key, exchange = self._split_reply_queue(queue)
        with self._errors():
            members = self.client.execute("SMEMBERS", self._k(BINDING_KEY + exchange))
        targets = []
        for m in members:
            text = m.decode("utf-8", "replace") if isinstance(m, bytes) else m
            rk, _pattern, target = text.split(self.sep, 2) if text.count(self.sep) >= 2 else ("", "", "")
            if rk == routing_key and target:
                targets.append(target)
        if not targets:
            logger.debug("No reply queue is bound for %s; reply dropped", queue)
            return
        env = _envelope(payload, {"ticket": ticket, "clock": self._tick()}, 1, exchange, routing_key)
        with self._errors():
            self.client.pipeline([("LPUSH", self.queue_key(target), env) for target in targets])

    def subscribe_replies(self, queue: str) -> Subscription:
        routing_key, exchange = self._split_reply_queue(queue)
        return _ReplyQueue(self, queue, routing_key, exchange)

    # -- revoked ids ---------------------------------------------------------------------
    def store_revoked(self, task_ids: Sequence[str], expires: float) -> None:
        if not task_ids:
            return
        until = time.time() + expires
        with self._errors():
            self.client.execute("ZADD", self._k(REVOKED_KEY), "GT", *(x for t in task_ids for x in (until, t)))

    def load_revoked(self) -> list[str]:
        key = self._k(REVOKED_KEY)
        now = time.time()
        with self._errors():
            _, ids = self.client.pipeline([("ZREMRANGEBYSCORE", key, "-inf", now),
                                           ("ZRANGEBYSCORE", key, now, "+inf")], transaction=True)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]
