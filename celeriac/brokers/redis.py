"""The Redis broker, laid out exactly as Celery 5 / kombu lay out a Redis queue.

A real Celery client or worker can share a queue with ours (celery-wire.md §2).

Layout (every key below is preceded by the ``global_keyprefix`` option)::

    Q, Q␆␖3, Q␆␖6, Q␆␖9          lists, one per priority step; producers LPUSH the
                                   kombu JSON envelope, consumers pop from the right
    _kombu.binding.Q             sets with the member "Q␆␖␆␖Q" (so publishers going
    _kombu.binding_permanent.Q   through the exchange named Q reach the queue)
    unacked                      kombu's hash: tag -> [envelope, exchange, routing key]
    unacked_index                kombu's zset: tag -> time it was taken
    celeriac.leases              zset: tag -> lease expiry (Redis server time)
    celeriac.lease_owner         hash: tag -> consumer id
    celeriac.lease_queue         hash: tag -> queue it was popped from
    celeriac.consumer.<id>       set: the tags a consumer holds (heartbeat, release)
    celeriac.leased.<Q>          set: the tags leased from Q (stats)
    celeriac.started             set: tags a holder reported as running
    celeriac.delayed             zset: "<step>|<len(Q)>|<Q><envelope>" -> due time
    celeriac.delayed.<Q>         zset: the same members for one queue (stats, purge)
    celeriac.bell.<Q>            list: at most one wake-up token for idle consumers
    celeriac.dead_letters        list (newest first, capped): JSON dead letters
    celeriac.seq                 counter for made-up tags and dead-letter ids
    celeriac.bucket.<key>        hash {tokens, stamp}: global_rate_limit token buckets

Why nothing is lost: a message is always in exactly one of (a) its list, (b) the
delayed zsets, (c) kombu's ``unacked`` hash — which is where a leased message's
bytes live — or (d) the dead-letter list.  Every move between them is one Lua
script (redis_*.lua), so a crash of any client at any point leaves the message
in one of them; inside a script the new copy is written before the old one is
deleted, so a command that fails (a Lua error is not rolled back) can at worst
leave two copies, never none.  Fetching never uses BRPOP on the queue lists, because a popped
message in flight to a client that dies is gone; an idle consumer instead
blocks on its queues' doorbell lists (BRPOP of a token is harmless) and then
leases with the atomic script.  Our producers ring the doorbell; messages from
other producers (a Celery client) are picked up by polling every
``polling_interval`` seconds (0.25 by default).  A dead holder's lease expires
and any consumer's fetch (at most once a second per broker object) puts the
message back, marked redelivered; a Celery worker's visibility-timeout restore
can also put it back from ``unacked``, and whichever comes second finds the
entry gone and does nothing, so it is never duplicated.  Heartbeats refresh the
``unacked_index`` score so Celery never restores a message we still hold.
The same sweep also does kombu's job for messages a Celery worker took and
abandoned more than ``visibility_timeout`` seconds ago (mixed fleets).

``visibility_timeout`` (Celery's option, default 3600) is also the lease length
when ``lease_seconds`` is not given explicitly.

Only celeriac consumers move due messages out of the delayed zsets.  When a queue
is consumed by Celery workers alone, set the transport option ``eta_in_broker`` to
False: ETA/countdown messages then go on the queue at once, eta in the headers,
as Celery sends them (a celeriac worker that takes one puts it back in the zset).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..exceptions import DecodeError
from ..protocol.message import Envelope, from_kombu_json, to_kombu_json
from ._redis_conn import DEFAULT_SOCKET_TIMEOUT, connect, map_errors
from .base import (
    DEFAULT_LEASE_SECONDS,
    Broker,
    Capabilities,
    DeadLetter,
    Delivery,
    PublishItem,
    QueueStats,
)
from .redis_pidbox import RedisPidboxMixin  # remote control: pub/sub, reply queues, revoked ids

SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
BINDING_KEY = "_kombu.binding."
BINDING_PERMANENT_KEY = "_kombu.binding_permanent."
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
LEASES_KEY = "celeriac.leases"
LEASE_OWNER_KEY = "celeriac.lease_owner"
LEASE_QUEUE_KEY = "celeriac.lease_queue"
CONSUMER_LEASES_PREFIX = "celeriac.consumer."
QUEUE_LEASED_PREFIX = "celeriac.leased."
STARTED_KEY = "celeriac.started"
DELAYED_KEY = "celeriac.delayed"
QUEUE_DELAYED_PREFIX = "celeriac.delayed."
BELL_PREFIX = "celeriac.bell."
DEAD_LETTERS_KEY = "celeriac.dead_letters"
SEQ_KEY = "celeriac.seq"
BUCKET_PREFIX = "celeriac.bucket."

DEAD_LETTER_CAP = 10_000
KOMBU_VISIBILITY_TIMEOUT = 3600.0  # kombu's default
DEFAULT_POLLING_INTERVAL = 0.25    # seconds between polls for messages from non-celeriac producers
RECLAIM_INTERVAL = 1.0             # seconds between expired-lease sweeps per broker object
MIN_BLOCK = 0.01                   # BRPOP rounds to milliseconds, and 0 would block forever

_HERE = Path(__file__).parent
_SCRIPTS = ("fetch", "heartbeat", "release", "requeue", "replay", "purge", "tokens", "bury")

# Queues whose binding members were written, per server and key prefix (kombu
# binds once per queue per process); forgotten after a connection error, since
# the server may have restarted empty.
_DECLARED: dict[tuple[str, str], set[str]] = {}


@functools.cache
def _script_text(name: str) -> str:
    lib = (_HERE / "redis_lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + (_HERE / f"redis_{name}.lua").read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _redelivered_flag(env: Envelope) -> bool:
    info = env.properties.get("delivery_info")
    return bool(env.headers.get("redelivered") or (isinstance(info, dict) and info.get("redelivered")))


class RedisBroker(RedisPidboxMixin, Broker):
    capabilities = Capabilities(native_delay=True, priority=True, broadcast=True,
                                global_rate_limit=True, leases=True)

    def __init__(self, url: str, *, lease_seconds: float | None = None,
                 options: dict[str, Any] | None = None) -> None:
        opts = dict(options or {})
        if lease_seconds is None:
            lease_seconds = float(opts.get("visibility_timeout") or DEFAULT_LEASE_SECONDS)
        super().__init__(url, lease_seconds=lease_seconds, options=opts)
        self.prefix = str(opts.get("global_keyprefix") or "")
        self.sep = str(opts.get("sep") or SEP)
        self.steps = tuple(sorted({int(s) for s in opts.get("priority_steps") or DEFAULT_PRIORITY_STEPS}))
        self.polling_interval = float(opts.get("polling_interval") or DEFAULT_POLLING_INTERVAL)
        # False: an ETA/countdown message goes on its queue at once with its eta header, as
        # Celery sends it, so Celery workers (which hold it themselves) can run it; ours
        # hand it back to the delayed zset.  Needed when no celeriac worker consumes the queue.
        self.eta_in_broker = str(opts.get("eta_in_broker", True)).lower() not in ("0", "false", "no", "off")
        self.unacked_key = self.prefix + str(opts.get("unacked_key") or UNACKED_KEY)
        self.unacked_index_key = self.prefix + str(opts.get("unacked_index_key") or UNACKED_INDEX_KEY)
        self._conn = connect(url, opts)
        self.client = self._conn.client
        self.where = self._conn.where
        # kombu's visibility timeout, for its sweep of abandoned Celery-held messages
        self.visibility_timeout = float(opts.get("visibility_timeout") or KOMBU_VISIBILITY_TIMEOUT)
        # a blocking read must end well before the socket times out
        socket_timeout = float(opts.get("socket_timeout") or DEFAULT_SOCKET_TIMEOUT)
        self._max_block = min(self.polling_interval, socket_timeout / 2)
        self._layout = json.dumps({
            "prefix": self.prefix, "sep": self.sep, "steps": list(self.steps),
            "unacked": self.unacked_key, "unacked_index": self.unacked_index_key,
            "leases": self._k(LEASES_KEY), "lease_owner": self._k(LEASE_OWNER_KEY),
            "lease_queue": self._k(LEASE_QUEUE_KEY), "started": self._k(STARTED_KEY),
            "consumer_prefix": self._k(CONSUMER_LEASES_PREFIX), "leased_prefix": self._k(QUEUE_LEASED_PREFIX),
            "delayed": self._k(DELAYED_KEY), "delayed_prefix": self._k(QUEUE_DELAYED_PREFIX),
            "bell_prefix": self._k(BELL_PREFIX), "binding_prefix": self._k(BINDING_KEY),
            "dead_letters": self._k(DEAD_LETTERS_KEY), "dead_cap": DEAD_LETTER_CAP, "seq": self._k(SEQ_KEY),
        })
        # register_script: EVALSHA, and SCRIPT LOAD again on NOSCRIPT (e.g. after a restart)
        self._scripts = {name: self.client.register_script(_script_text(name)) for name in _SCRIPTS}
        self._declared = _DECLARED.setdefault((self.where, self.prefix), set())
        self._next_reclaim = 0.0
        self._rotation = 0

    # -- keys --------------------------------------------------------------------
    def _k(self, name: str) -> str:
        return self.prefix + name

    def step_for(self, priority: int | None) -> int:
        """kombu's rule: clamp to 0..9, then the largest step not above it."""
        p = min(max(int(priority or 0), 0), 9)
        return max((s for s in self.steps if s <= p), default=self.steps[0])

    def queue_key(self, queue: str, step: int = 0) -> str:
        """The (prefixed) list key of ``queue`` for a priority step."""
        return self.prefix + queue + (f"{self.sep}{step}" if step else "")

    def _delayed_member(self, queue: str, step: int, payload: str) -> str:
        return f"{step}|{len(queue.encode('utf-8'))}|{queue}{payload}"

    def _errors(self) -> Any:
        return map_errors(self.where, self._declared.clear)

    def _run(self, script: str, args: Sequence[Any]) -> Any:
        with self._errors():
            return self._scripts[script](args=[self._layout, *args])

    # -- life cycle --------------------------------------------------------------
    def connect(self) -> None:
        with self._errors():
            self.client.ping()

    def close(self) -> None:
        self._conn.close()

    def _bind(self, pipe: Any, queue: str) -> None:
        member = f"{queue}{self.sep}{self.sep}{queue}"
        pipe.sadd(self._k(BINDING_KEY + queue), member)
        pipe.sadd(self._k(BINDING_PERMANENT_KEY + queue), member)

    def _declare(self, queues: Iterable[str]) -> None:
        new = [q for q in dict.fromkeys(queues) if q not in self._declared]
        if new:
            pipe = self.client.pipeline(transaction=True)
            for q in new:
                self._bind(pipe, q)
            with self._errors():
                pipe.execute()
            self._declared.update(new)

    def declare_queue(self, name: str) -> None:
        self._declare([name])

    # -- producing ---------------------------------------------------------------
    def publish_many(self, items: Sequence[PublishItem]) -> None:
        if not items:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        new = [q for q in dict.fromkeys(it.queue for it in items) if q not in self._declared]
        for q in new:
            self._bind(pipe, q)
        ready: dict[str, list[str]] = {}
        touched: dict[str, None] = {}
        for it in items:
            payload = to_kombu_json(it.envelope, it.exchange, it.queue, str(uuid.uuid4()))
            step = self.step_for(it.envelope.priority)
            if it.not_before is not None and it.not_before > now and self.eta_in_broker:
                member = self._delayed_member(it.queue, step, payload)
                pipe.zadd(self._k(DELAYED_KEY), {member: it.not_before})
                pipe.zadd(self._k(QUEUE_DELAYED_PREFIX + it.queue), {member: it.not_before})
            else:
                ready.setdefault(self.queue_key(it.queue, step), []).append(payload)
            touched[it.queue] = None
        for key, payloads in ready.items():
            pipe.lpush(key, *payloads)
        for q in touched:  # wake one idle consumer (it re-reads the next due time for delayed ones)
            pipe.lpush(self._k(BELL_PREFIX + q), "1")
            pipe.ltrim(self._k(BELL_PREFIX + q), 0, 0)
        with self._errors():
            pipe.execute()
        self._declared.update(new)

    # -- consuming ---------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
              consumer_id: str) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if not names:
            time.sleep(max(timeout, 0.0))
            return []
        self._declare(names)
        if len(names) > 1:  # round robin between queues of one priority step, as kombu does
            self._rotation = (self._rotation + 1) % len(names)
            names = names[self._rotation:] + names[:self._rotation]
        bells = [self._k(BELL_PREFIX + q) for q in names]
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            reclaim = time.monotonic() >= self._next_reclaim
            if reclaim:
                self._next_reclaim = time.monotonic() + RECLAIM_INTERVAL
            res = self._run("fetch", [consumer_id, max(max_count, 0), self.lease_seconds,
                                      "1" if reclaim else "0", self.visibility_timeout, *names])
            if len(res) > 2:
                got = self._deliveries(res[2:], names, consumer_id)
                if got:
                    return got
                continue  # only undecodable messages: they were dead-lettered, look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = min(remaining, self._max_block)
            if res[1]:
                wait = min(wait, float(res[1]) - float(res[0]))
            if wait <= 0:
                continue
            with self._errors():
                self.client.brpop(bells, timeout=max(wait, MIN_BLOCK))

    def _deliveries(self, flat: Sequence[Any], names: list[str], consumer_id: str) -> list[Delivery]:
        out: list[Delivery] = []
        for i in range(0, len(flat), 4):
            tag, queue, raw, started = _text(flat[i]), names[int(flat[i + 1]) - 1], flat[i + 2], flat[i + 3]
            try:
                env = from_kombu_json(raw)
            except DecodeError as exc:
                self._bury(tag, queue, _text(raw), f"DecodeError: {exc}", {})
                continue
            out.append(Delivery(env, queue, tag, self, redelivered=_redelivered_flag(env),
                                started=bool(started), raw=consumer_id))
        return out

    def _forget(self, pipe: Any, deliveries: Sequence[Delivery]) -> None:
        """Queue the commands that drop every trace of delivered messages."""
        tags = [d.tag for d in deliveries]
        pipe.hdel(self.unacked_key, *tags)
        pipe.zrem(self.unacked_index_key, *tags)
        pipe.zrem(self._k(LEASES_KEY), *tags)
        pipe.hdel(self._k(LEASE_OWNER_KEY), *tags)
        pipe.hdel(self._k(LEASE_QUEUE_KEY), *tags)
        pipe.srem(self._k(STARTED_KEY), *tags)
        by_consumer: dict[str, list[str]] = {}
        by_queue: dict[str, list[str]] = {}
        for d in deliveries:
            by_consumer.setdefault(str(d.raw), []).append(d.tag)
            by_queue.setdefault(d.queue, []).append(d.tag)
        for consumer, ts in by_consumer.items():
            pipe.srem(self._k(CONSUMER_LEASES_PREFIX + consumer), *ts)
        for queue, ts in by_queue.items():
            pipe.srem(self._k(QUEUE_LEASED_PREFIX + queue), *ts)

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        ds = list(deliveries)
        if ds:
            pipe = self.client.pipeline(transaction=True)
            self._forget(pipe, ds)
            with self._errors():
                pipe.execute()

    def _redelivered_json(self, d: Delivery) -> str:
        info = d.envelope.properties.get("delivery_info")
        info = info if isinstance(info, dict) else {}
        data = json.loads(to_kombu_json(d.envelope, str(info.get("exchange") or ""),
                                        str(info.get("routing_key") or d.queue), d.tag))
        data["headers"]["redelivered"] = True
        data["properties"]["delivery_info"]["redelivered"] = True
        return json.dumps(data)

    def requeue(self, deliveries: Iterable[Delivery], delay: float | None = None) -> None:
        args: list[Any] = []
        due = time.time() + delay if delay else None
        for d in deliveries:
            payload = self._redelivered_json(d)
            step = self.step_for(d.envelope.priority)
            if due is None:
                args += [str(d.raw), d.tag, d.queue, self.queue_key(d.queue, step), payload, ""]
            else:
                args += [str(d.raw), d.tag, d.queue, "", self._delayed_member(d.queue, step, payload), repr(due)]
        if args:
            self._run("requeue", args)

    def heartbeat(self, consumer_id: str, running: Sequence[Delivery] = ()) -> None:
        self._run("heartbeat", [consumer_id, self.lease_seconds, *(d.tag for d in running)])

    def release_consumer(self, consumer_id: str) -> int:
        return int(self._run("release", [consumer_id]))

    def leased(self, consumer_id: str) -> list[Delivery]:
        with self._errors():
            tags = sorted(_text(t) for t in self.client.smembers(self._k(CONSUMER_LEASES_PREFIX + consumer_id)))
            if not tags:
                return []
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.unacked_key, tags)
            pipe.hmget(self._k(LEASE_OWNER_KEY), tags)
            pipe.hmget(self._k(LEASE_QUEUE_KEY), tags)
            for t in tags:
                pipe.sismember(self._k(STARTED_KEY), t)
            stored, owners, queues, *started = pipe.execute()
        out = []
        for tag, value, owner, queue, st in zip(tags, stored, owners, queues, started, strict=True):
            if value is None or owner is None or _text(owner) != consumer_id:
                continue
            try:
                env = from_kombu_json(json.dumps(json.loads(value)[0]))
            except (ValueError, TypeError, KeyError, IndexError, DecodeError):
                continue
            out.append(Delivery(env, _text(queue or b""), tag, self, _redelivered_flag(env), bool(st), consumer_id))
        return out

    # -- global rate limits ------------------------------------------------------
    def acquire_tokens(self, key: str, rate: float, burst: float = 1.0, n: float = 1.0) -> float:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        return float(self._run("tokens", [self._k(BUCKET_PREFIX + key), float(rate), float(burst), float(n)]))

    # -- dead letters ------------------------------------------------------------
    def _bury(self, tag: str, queue: str, raw: str, reason: str, headers: dict[str, Any]) -> None:
        entry = json.dumps({
            "dead_id": uuid.uuid4().hex, "reason": reason, "queue": queue,
            "task": headers.get("task"), "id": headers.get("id"), "failed_at": time.time(),
            "envelope": raw,
        })
        self._run("bury", [entry, tag])

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        info = delivery.envelope.properties.get("delivery_info")
        info = info if isinstance(info, dict) else {}
        raw = to_kombu_json(delivery.envelope, str(info.get("exchange") or ""),
                            str(info.get("routing_key") or delivery.queue), delivery.tag)
        self._bury(delivery.tag, delivery.queue, raw, reason, delivery.envelope.headers)

    @staticmethod
    def _parse_dead(value: bytes | str) -> DeadLetter | None:
        try:
            data = json.loads(value)
            return DeadLetter(str(data["dead_id"]), str(data.get("queue") or ""), str(data.get("reason") or ""),
                              str(data.get("envelope") or ""), float(data.get("failed_at") or 0.0),
                              data.get("task"), data.get("id"))
        except (ValueError, TypeError, KeyError):
            return None

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._errors():
            values = self.client.lrange(self._k(DEAD_LETTERS_KEY), 0, limit - 1)
        return [dl for dl in map(self._parse_dead, values) if dl is not None]

    def replay_dead_letter(self, dead_id: str) -> bool:
        with self._errors():
            values = self.client.lrange(self._k(DEAD_LETTERS_KEY), 0, -1)
        for value in values:
            dl = self._parse_dead(value)
            if dl is None or dl.id != dead_id:
                continue
            try:
                env = from_kombu_json(dl.raw)
                payload = to_kombu_json(env, "", dl.queue, str(uuid.uuid4()))
                key = self.queue_key(dl.queue, self.step_for(env.priority))
            except DecodeError:  # put the bytes back as they were
                payload, key = dl.raw, self.queue_key(dl.queue)
            return bool(self._run("replay", [value, dl.queue, key, payload]))
        return False

    # -- admin -------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return int(self._run("purge", [queue]))

    def stats(self, queue: str) -> QueueStats:
        pipe = self.client.pipeline(transaction=False)
        for step in self.steps:
            pipe.llen(self.queue_key(queue, step))
        pipe.zcard(self._k(QUEUE_DELAYED_PREFIX + queue))
        pipe.scard(self._k(QUEUE_LEASED_PREFIX + queue))
        with self._errors():
            *lengths, delayed, leased = pipe.execute()
        return QueueStats(ready=sum(lengths), delayed=delayed, leased=leased,
                          extra={"by_priority_step": dict(zip(self.steps, lengths, strict=True))})


__all__ = ["RedisBroker", "SEP", "DEFAULT_PRIORITY_STEPS"]
