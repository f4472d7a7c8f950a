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
    celeriac.lease               hash: tag -> "<consumer id>\n<queue it was popped from>"
    celeriac.consumer.<id>       set: the tags a consumer holds (heartbeat, release)
    celeriac.started             set: tags a holder reported as running
    celeriac.delayed             zset: "<step>|<len(Q)>|<Q><envelope>" -> due time
    celeriac.delayed.<Q>         zset: the same members for one queue (stats, purge)
    celeriac.bell.<Q>            list: at most one wake-up token for idle consumers
    celeriac.wake.<consumer>     list: a token that ends the consumer's own BRPOP at once
                                   (pushed by its fetch when there is work; expires in 60 s),
                                   or a message a publisher handed it ("h<tag>\n<Q>\n<envelope>")
    celeriac.idle.<Q>            zset: consumers of Q alone that found nothing -> until when
                                   they count as idle (hand-off: see _redis_publish.py)
    celeriac.idle_of             hash: consumer -> "<Q>\n<its lease seconds>" (the same)
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

Round trips on the hot path (issue 4): a ``delay()`` is one ``redis_publish.lua`` call (it
hands the message to an idle consumer, else LPUSHes it and rings) written and read on the
broker's fast lane (``_redis_fast.py``: one held connection,
hand-packed commands).  A worker's batch is one call of ``redis_fetch.lua``, which first
settles the previous batch: its results (when the result backend is this server and
database; stored with ``redis_store.lua``'s rules, SET + PUBLISH) and then its acks, all in
one atomic script, so a result is never acked before it is stored.  Behind the script, in
the same write, goes ``BRPOP <own wake list> <doorbells>``: the script pushes a token on the
wake list when it returned work (or a delayed message is due soon), so the BRPOP returns at
once then, and otherwise sleeps until a producer rings.  With results on another server, a
batch costs two round trips: the results' store, then the fetch that acks.

Only celeriac consumers move due messages out of the delayed zsets.  When a queue
is consumed by Celery workers alone, set the transport option ``eta_in_broker`` to
False: ETA/countdown messages then go on the queue at once, eta in the headers,
as Celery sends them (a celeriac worker that takes one puts it back in the zset).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._redis_url import DEFAULT_SOCKET_TIMEOUT, connect, map_errors, same_server
from .._resp import EXEC, MULTI, NoScriptError, RedisError, ResponseError, Script, pack, pack_pieces
from ..exceptions import DecodeError
from ..protocol.bulk import BulkMessages
from ..protocol.message import Envelope, from_kombu_json, to_kombu_json
from ._redis_fast import FastLane, Tags
from ._redis_publish import RESEND_SCRIPT, handed, publish_forms
from .base import (
    DEFAULT_LEASE_SECONDS,
    Broker,
    Capabilities,
    Delivery,
    PublishItem,
    QueueStats,
)
from .redis_dead import DEAD_LETTERS_KEY, RedisDeadLetterMixin  # dead letters, global rate-limit buckets
from .redis_pidbox import RedisPidboxMixin  # remote control: pub/sub, reply queues, revoked ids

SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
BINDING_KEY = "_kombu.binding."
BINDING_PERMANENT_KEY = "_kombu.binding_permanent."
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
LEASES_KEY = "celeriac.leases"
LEASE_KEY = "celeriac.lease"      # hash: tag -> "<consumer>\n<queue>"
CONSUMER_LEASES_PREFIX = "celeriac.consumer."
STARTED_KEY = "celeriac.started"
DELAYED_KEY = "celeriac.delayed"
QUEUE_DELAYED_PREFIX = "celeriac.delayed."
BELL_PREFIX = "celeriac.bell."
WAKE_PREFIX = "celeriac.wake."     # list: one consumer's own wake-up token (see redis_fetch.lua)
IDLE_PREFIX = "celeriac.idle."     # zset: consumer -> until when it is idle on Q (hand-off)
IDLE_OF_KEY = "celeriac.idle_of"   # hash: consumer -> the queue it registered idle on
SEQ_KEY = "celeriac.seq"

DEAD_LETTER_CAP = 10_000
KOMBU_VISIBILITY_TIMEOUT = 3600.0  # kombu's default
DEFAULT_POLLING_INTERVAL = 0.25    # seconds between polls for messages from non-celeriac producers
RECLAIM_INTERVAL = 1.0             # seconds between expired-lease sweeps per broker object
MIN_BLOCK = 0.01                   # BRPOP rounds to milliseconds, and 0 would block forever
COALESCE_SECONDS = 0.001           # a busy consumer's pause before a fetch (see fetch)
HANDOFF_GAP = 0.0002               # a publish this soon after the previous one does not hand off

_HERE = Path(__file__).parent
_SCRIPTS = ("fetch", "heartbeat", "release", "requeue", "replay", "purge", "tokens", "bury")

# Queues whose binding members were written, per server and key prefix (kombu
# binds once per queue per process); forgotten after a connection error, since
# the server may have restarted empty.
_DECLARED: dict[tuple[str, str], set[str]] = {}


@functools.cache
def _script_text(name: str) -> str:
    lib = (_HERE / "redis_lib.lua").read_text(encoding="utf-8")
    if name == "fetch":
        # the fetch also stores the previous batch's results when the result backend is
        # this server: the result backend's own script, as a function of (KEYS, ARGV)
        store = (_HERE.parent / "backends" / "redis_store.lua").read_text(encoding="utf-8")
        lib += f"\nlocal function store_results(KEYS, ARGV)\n{store}\nend\n"
    return lib + "\n" + (_HERE / f"redis_{name}.lua").read_text(encoding="utf-8")


class RedisSettlement:
    """What a consumer finished since its last fetch, settled by that fetch's script:
    the delivery tags to ack and, when the result backend is the same server and
    database, the results to store before them (``[ttl_ms, key, status, meta, ...]``)."""

    __slots__ = ("args",)

    def __init__(self, tags: Sequence[str], results: Sequence[Any] = ()) -> None:
        self.args = [len(tags), *tags, *results]

    def committed(self) -> None:
        """Nothing to do after the script: it published the results itself."""


def _layout(p: str, sep: str, steps: Sequence[int], unacked: str, unacked_index: str) -> str:
    """The key layout the scripts receive (redis_lib.lua): full names, and prefixes."""
    return json.dumps({
        "prefix": p, "sep": sep, "steps": list(steps), "unacked": unacked, "unacked_index": unacked_index,
        "leases": p + LEASES_KEY, "lease": p + LEASE_KEY,
        "started": p + STARTED_KEY, "consumer_prefix": p + CONSUMER_LEASES_PREFIX,
        "wake_prefix": p + WAKE_PREFIX, "idle_prefix": p + IDLE_PREFIX, "idle_of": p + IDLE_OF_KEY,
        "delayed": p + DELAYED_KEY, "delayed_prefix": p + QUEUE_DELAYED_PREFIX,
        "bell_prefix": p + BELL_PREFIX, "binding_prefix": p + BINDING_KEY,
        "dead_letters": p + DEAD_LETTERS_KEY, "dead_cap": DEAD_LETTER_CAP, "seq": p + SEQ_KEY,
    })


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _redelivered_flag(env: Envelope) -> bool:
    info = env.properties.get("delivery_info")
    return bool(env.headers.get("redelivered") or (isinstance(info, dict) and info.get("redelivered")))


class RedisBroker(RedisDeadLetterMixin, RedisPidboxMixin, Broker):
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
        # True: every publish waits for Redis's reply; False (default): single publishes are
        # pipelined, their replies read in bulk (the same guarantees, see _redis_fast.py)
        self.confirm_publish = str(opts.get("confirm_publish", False)).lower() in ("1", "true", "yes", "on")
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
        self._layout = self.layout_json = _layout(self.prefix, self.sep, self.steps, self.unacked_key,
                                                  self.unacked_index_key)
        if self._layout == RedisBroker._default_layout(self.prefix):
            self._layout = "~" + self.prefix  # redis_lib.lua builds the same table itself
        # EVALSHA, and SCRIPT LOAD again on NOSCRIPT (e.g. after a restart)
        self._scripts = {name: Script(_script_text(name)) for name in _SCRIPTS}
        self._declared = _DECLARED.setdefault((self.where, self.prefix), set())
        self._next_reclaim = 0.0
        self._rotation = 0
        self._recent: dict[str, tuple[int, int]] = {}  # consumer -> (last batch size, fetches in a row with work)
        self._lane = FastLane(self.client)  # the hot path: one held connection, hand-packed commands
        self._tag = Tags()
        self._step_of = {p: self.step_for(p) for p in range(10)}
        self._publish_keys: dict[tuple[str, int, str], tuple[bytes, bytes, bytes]] = {}
        self._last_publish = 0.0
        # hand a single publish straight to an idle consumer of its queue (_redis_publish.py)
        self.handoff = str(opts.get("handoff", True)).lower() not in ("0", "false", "no", "off")
        self._keys = {"bell": self._k(BELL_PREFIX), "idle": self._k(IDLE_PREFIX), "leases": self._k(LEASES_KEY),
                      "lease": self._k(LEASE_KEY), "consumer": self._k(CONSUMER_LEASES_PREFIX),
                      "wake": self._k(WAKE_PREFIX), "idle_of": self._k(IDLE_OF_KEY)}

    @staticmethod
    def _default_layout(prefix: str) -> str:
        """The layout JSON of a broker with default options (see redis_lib.lua's "~" form)."""
        return _layout(prefix, SEP, DEFAULT_PRIORITY_STEPS, prefix + UNACKED_KEY, prefix + UNACKED_INDEX_KEY)

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
        """Error mapping for a command; pipelined publishes are confirmed first, so that
        what a command on another connection sees includes them (read your writes)."""
        lane = self.__dict__.get("_lane")
        if lane is not None and lane.pending:
            with map_errors(self.where, self._declared.clear):
                lane.confirm()
        return map_errors(self.where, self._declared.clear)

    def _run(self, script: str, args: Sequence[Any]) -> Any:
        with self._errors():
            return self.client.evalsha(self._scripts[script], [], [self._layout, *args])

    # -- life cycle --------------------------------------------------------------
    def connect(self) -> None:
        with self._errors():
            self.client.execute("PING")

    def close(self) -> None:
        self._lane.close()
        self._conn.close()

    def _bind(self, queue: str) -> list[tuple[Any, ...]]:
        member = f"{queue}{self.sep}{self.sep}{queue}"
        return [("SADD", self._k(BINDING_KEY + queue), member),
                ("SADD", self._k(BINDING_PERMANENT_KEY + queue), member)]

    def _declare(self, queues: Iterable[str]) -> None:
        new = [q for q in dict.fromkeys(queues) if q not in self._declared]
        if new:
            with self._errors():
                self.client.pipeline([c for q in new for c in self._bind(q)], transaction=True)
            self._declared.update(new)

    def declare_queue(self, name: str) -> None:
        self._declare([name])

    # -- producing ---------------------------------------------------------------
    def publish(self, envelope: Envelope, queue: str, *, not_before: float | None = None,
                exchange: str = "") -> None:
        """One message, written on the fast lane: ``redis_publish.lua`` (hands it to an idle
        consumer of the queue, else LPUSH and ring the doorbell; see _redis_publish.py), or
        with the transport option ``handoff=False`` (and in a burst) LPUSH and the doorbell.

        Pipelined by default: this returns once the command is written, and its reply is
        read later (a refusal raises ``PublishFailed`` from the next use; a lost connection
        sends the unconfirmed messages again).  With the transport option
        ``confirm_publish=True`` it waits for Redis's reply (one round trip per call)."""
        if (not_before is not None and self.eta_in_broker and not_before > time.time()) \
                or queue not in self._declared:
            self.publish_many([PublishItem(envelope, queue, not_before, exchange)])
            return
        p = envelope.properties.get("priority")
        step = self._step_of.get(p, 0) if p.__class__ is int else self.steps[0]
        forms = self._publish_keys.get((queue, step, exchange))
        if forms is None:
            forms = self._publish_keys[(queue, step, exchange)] = publish_forms(self, queue, step, exchange,
                                                                                self._keys)
        tag = self._tag()
        body = to_kombu_json(envelope, exchange, queue, tag).encode()
        # In a burst (the previous publish less than HANDOFF_GAP ago) the consumers are busy, or
        # the doorbell that publish rang wakes them: plain LPUSH and ring, cheaper than the script.
        now = time.monotonic()
        alone, self._last_publish = now - self._last_publish >= HANDOFF_GAP, now
        if self.handoff and alone:  # EVAL of redis_publish.lua: hand off, or LPUSH and ring
            t = tag.encode()
            packed = b"".join((forms[0], b"$%d\r\n" % len(t), t, b"\r\n$%d\r\n" % len(body), body, b"\r\n"))
            replies = 1
        else:
            packed = b"".join((forms[1], b"$%d\r\n" % len(body), body, b"\r\n", forms[2]))
            replies = 3
        try:
            if self.confirm_publish:
                res = self._lane.call(packed, replies)  # an error reply raises
                if res is not None:
                    for r in res[-1] if isinstance(res[-1], list) else ():
                        if isinstance(r, Exception):
                            raise r
                    return
            elif self._lane.send(packed, replies, str(envelope.headers.get("id")),
                                 lambda: self._resend_form(queue, step, body, tag)):
                return  # pipelined: written now, its reply read later (see _redis_fast.py)
        except RedisError:
            with self._errors():
                raise
        # another thread holds the lane
        self.publish_many([PublishItem(envelope, queue, not_before, exchange)])

    def _resend_form(self, queue: str, step: int, body: bytes, tag: str) -> bytes:
        """A pipelined publish whose reply was lost with its connection, sent again: pushed
        only if Redis does not have it already (in its list, or leased by a consumer)."""
        return pack("EVAL", RESEND_SCRIPT, 3, self.queue_key(queue, step), self.unacked_key,
                    self._k(BELL_PREFIX + queue), body, tag)

    def publish_many(self, items: Sequence[PublishItem]) -> None:
        if not items:
            return
        now = time.time()
        new = [q for q in dict.fromkeys(it.queue for it in items) if q not in self._declared]
        cmds: list[tuple[Any, ...]] = []
        for q in new:
            cmds += self._bind(q)
        ready: dict[str, list[str]] = {}
        touched: dict[str, None] = {}
        tag, step_of, first = self._tag, self._step_of, self.steps[0]
        for it in items:
            payload = to_kombu_json(it.envelope, it.exchange, it.queue, tag())
            p = it.envelope.properties.get("priority")
            step = step_of.get(p, first) if p.__class__ is int else first
            if it.not_before is not None and it.not_before > now and self.eta_in_broker:
                member = self._delayed_member(it.queue, step, payload)
                cmds.append(("ZADD", self._k(DELAYED_KEY), it.not_before, member))
                cmds.append(("ZADD", self._k(QUEUE_DELAYED_PREFIX + it.queue), it.not_before, member))
            else:
                ready.setdefault(self.queue_key(it.queue, step), []).append(payload)
            touched[it.queue] = None
        for key, payloads in ready.items():
            cmds.append(("LPUSH", key, *payloads))
        for q in touched:  # wake one idle consumer (it re-reads the next due time for delayed ones)
            cmds.append(("LPUSH", self._k(BELL_PREFIX + q), "1"))
            cmds.append(("LTRIM", self._k(BELL_PREFIX + q), 0, 0))
        self._transaction(cmds)
        self._declared.update(new)

    def publish_bulk(self, batch: BulkMessages, queue: str, exchange: str = "") -> None:
        """The messages of one bulk send: one LPUSH of their kombu JSON (written straight
        from their arguments), in one MULTI with the doorbell, packed in one copy."""
        p = batch.proto.properties.get("priority")
        step = self._step_of.get(p, self.steps[0]) if p.__class__ is int else self.steps[0]
        payloads = batch.kombu_json(exchange, queue, self._tag.many(len(batch)))
        new = [] if queue in self._declared else [queue]
        bell = self._k(BELL_PREFIX + queue)
        push = ("LPUSH", self.queue_key(queue, step), *payloads)
        cmds = [*(c for q in new for c in self._bind(q)), push, ("LPUSH", bell, "1"), ("LTRIM", bell, 0, 0)]
        self._transaction(cmds, b"".join([MULTI, *(pack(*c) for c in cmds[:-3]), *pack_pieces(*push),
                                          *(pack(*c) for c in cmds[-2:]), EXEC]))
        self._declared.update(new)

    def _transaction(self, cmds: Sequence[tuple[Any, ...]], packed: bytes | None = None) -> None:
        """MULTI, the commands, EXEC: one write on the fast lane (a pipeline if it is busy).
        ``packed``: that write, when the caller has packed it."""
        if packed is None:
            packed = b"".join([MULTI, *(pack(*c) for c in cmds), EXEC])
        try:
            res = self._lane.call(packed, len(cmds) + 2)
        except RedisError:
            with self._errors():
                raise
        if res is None:
            with self._errors():
                self.client.pipeline(cmds, transaction=True)
            return
        for r in res[-1] or ():
            if isinstance(r, ResponseError):
                with self._errors():
                    raise r

    # -- consuming ---------------------------------------------------------------
    # -- settling (worker/loop.py): a batch's results and acks ride on the next fetch --
    def settles_with(self, backend: Any) -> str:
        """"all" when ``fetch(settle=...)`` can also store ``backend``'s results (it is a
        Redis result backend on this server and database, storing results its own way:
        not a subclass that changes how), else "acks"."""
        from ..backends.base import ResultBackend
        from ..backends.redis import RedisBackend
        if not isinstance(backend, RedisBackend) or type(backend)._set_many is not RedisBackend._set_many \
                or type(backend).store_metas is not ResultBackend.store_metas:
            return "acks"
        conn = getattr(backend, "_conn", None)
        if conn is None or getattr(conn, "where", None) != self.where:
            return "acks"
        return "all" if same_server(self.client, conn.client) else "acks"

    def settlement(self, acks: Sequence[Delivery], metas: Sequence[dict[str, Any]], backend: Any) -> RedisSettlement:
        """The settle argument for ``fetch``: ``metas`` only when ``settles_with(backend)`` is "all"."""
        return RedisSettlement([d.tag for d in acks], backend.redis_store_args(metas) if metas else ())

    def _script(self, name: str, args: Sequence[Any]) -> Any:
        """EVALSHA on the fast lane (the pool when another thread holds it)."""
        script = self._scripts[name]
        packed = pack("EVALSHA", script.sha, 0, self._layout, *args)
        try:
            try:
                res = self._lane.call(packed, 1)
            except NoScriptError:  # nothing ran: load it and run again
                self.client.script_load(script)
                res = self._lane.call(packed, 1)
        except RedisError:
            with self._errors():
                raise
        return self._run(name, args) if res is None else res[0]

    def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
              consumer_id: str, settle: RedisSettlement | None = None) -> list[Delivery]:
        """Lease up to ``max_count`` messages.  ``settle`` (see ``settlement``) is run by the
        same script first: the previous batch's results and acks cost no round trip."""
        names = list(dict.fromkeys(queues))
        settle_args: list[Any] = settle.args if settle is not None else [0]
        if not names:
            if settle is not None:
                self._script("fetch", [consumer_id, 0, self.lease_seconds, "0", self.visibility_timeout, "", 0,
                                       0, *settle_args])
            time.sleep(max(timeout, 0.0))
            return []
        self._declare(names)
        if len(names) > 1:  # round robin between queues of one priority step, as kombu does
            self._rotation = (self._rotation + 1) % len(names)
            names = names[self._rotation:] + names[:self._rotation]
        bells = [self._k(BELL_PREFIX + q) for q in names]
        wake = self._k(WAKE_PREFIX + consumer_id)
        deadline = time.monotonic() + max(timeout, 0.0)
        last, streak = self._recent.get(consumer_id, (0, 0))
        # Under load (the last fetch found work) the script runs alone: no BRPOP behind it,
        # hence no wake token for it to pop (three Redis commands per batch fewer).  When
        # that finds nothing, the loop below looks again the usual way, and then blocks.
        busy = streak >= 1 and last >= max_count
        if streak >= 2 and 0 < last < max_count:
            # Under load (this consumer's last fetches all found work, the last one less than
            # it asked for): let a few more messages arrive first.  Fewer, fuller batches cost
            # less per task on both sides; an idle consumer (its last fetch found nothing)
            # fetches at once, so a lone task's latency is unchanged.
            time.sleep(COALESCE_SECONDS)
            busy = True
        while True:
            now = time.monotonic()
            reclaim = now >= self._next_reclaim
            if reclaim:
                self._next_reclaim = now + RECLAIM_INTERVAL
            block = round(max(min(deadline - now, self._max_block), MIN_BLOCK), 3)
            args = [consumer_id, max(max_count, 0), self.lease_seconds, "1" if reclaim else "0",
                    self.visibility_timeout, "" if busy else wake, block, len(names), *names, *settle_args]
            if busy:
                res, woke, busy = self._script("fetch", args), None, False
            else:
                res, woke = self._fetch_then_wait(args, [wake, *bells], block)
            settle_args = [0]
            if len(res) > 2:
                got = self._deliveries(res[2:], names, consumer_id)
                if got:
                    self._recent[consumer_id] = (len(got), streak + 1)
                    return got
                continue  # only undecodable messages: they were dead-lettered, look again
            streak = 0
            self._recent[consumer_id] = (0, 0)
            item = handed(woke[1]) if woke is not None and woke[1] else None
            if item is not None:  # a publisher handed us a message while we were idle
                got = self._deliveries([item[0], 1, item[2], 0], [item[1]], consumer_id)
                if got:
                    return got
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if woke is None or _text(woke[0]) != wake:
                continue  # a doorbell rang, or the BRPOP waited its time: look again
            # our own token without work: a delayed message is due before the block ends
            # (or there was no BRPOP, see _fetch_then_wait); wait until then
            wait = min(remaining, self._max_block)
            if res[1]:
                wait = min(wait, float(res[1]) - float(res[0]))
            if wait > 0:
                self._ring_wait(bells, max(wait, MIN_BLOCK))

    def _fetch_then_wait(self, args: list[Any], wait_keys: list[str], block: float) -> tuple[Any, Any]:
        """The fetch script and, behind it in the same write, a BRPOP on this consumer's wake
        list and the doorbells: (script reply, BRPOP reply or None).  The script pushes a
        wake token when it returns work, so the BRPOP only sleeps when there is none.
        Without the fast lane (another thread holds it): the script alone, and (reply, "")."""
        script = self._scripts["fetch"]
        packed = pack("EVALSHA", script.sha, 0, self._layout, *args) + pack("BRPOP", *wait_keys, block)
        try:
            try:
                got = self._lane.call(packed, 2)
            except NoScriptError:  # nothing ran (the BRPOP timed out): load it, again
                self.client.script_load(script)
                got = self._lane.call(packed, 2)
        except RedisError:
            with self._errors():
                raise
        if got is None:
            args[5] = ""  # no wake list: nobody would pop its token
            return self._run("fetch", args), (wait_keys[0], b"")
        return got[0], got[1]

    def _ring_wait(self, bells: Sequence[str], timeout: float) -> None:
        """Block until a doorbell rings (BRPOP of a token) or ``timeout`` seconds pass."""
        try:
            if self._lane.call(pack("BRPOP", *bells, round(timeout, 3)), 1) is not None:
                return
        except RedisError:
            with self._errors():
                raise
        with self._errors():
            self.client.execute("BRPOP", *bells, round(timeout, 3), block=timeout)

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

    def _forget(self, deliveries: Sequence[Delivery]) -> list[tuple[Any, ...]]:
        """The commands that drop every trace of delivered messages."""
        tags = [d.tag for d in deliveries]
        cmds: list[tuple[Any, ...]] = [
            ("HDEL", self.unacked_key, *tags), ("ZREM", self.unacked_index_key, *tags),
            ("ZREM", self._k(LEASES_KEY), *tags), ("HDEL", self._k(LEASE_KEY), *tags),
            ("SREM", self._k(STARTED_KEY), *tags)]
        by_consumer: dict[str, list[str]] = {}
        for d in deliveries:
            by_consumer.setdefault(str(d.raw), []).append(d.tag)
        for consumer, ts in by_consumer.items():
            cmds.append(("SREM", self._k(CONSUMER_LEASES_PREFIX + consumer), *ts))
        return cmds

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        ds = list(deliveries)
        if ds:
            with self._errors():
                self.client.pipeline(self._forget(ds), transaction=True)

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
            tags = sorted(_text(t) for t in self.client.execute(
                "SMEMBERS", self._k(CONSUMER_LEASES_PREFIX + consumer_id)))
            if not tags:
                return []
            stored, leases, *started = self.client.pipeline([
                ("HMGET", self.unacked_key, *tags), ("HMGET", self._k(LEASE_KEY), *tags),
                *(("SISMEMBER", self._k(STARTED_KEY), t) for t in tags)])
        out = []
        for tag, value, held, st in zip(tags, stored, leases, started, strict=True):
            owner, _, queue = _text(held or b"").partition("\n")
            if value is None or owner != consumer_id:
                continue
            try:
                env = from_kombu_json(json.dumps(json.loads(value)[0]))
            except (ValueError, TypeError, KeyError, IndexError, DecodeError):
                continue
            out.append(Delivery(env, queue, tag, self, _redelivered_flag(env), bool(st), consumer_id))
        return out

    # -- admin -------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return int(self._run("purge", [queue]))

    def stats(self, queue: str) -> QueueStats:
        cmds: list[tuple[Any, ...]] = [("LLEN", self.queue_key(queue, step)) for step in self.steps]
        # every lease (as many as prefetched messages): count this queue's
        cmds += [("ZCARD", self._k(QUEUE_DELAYED_PREFIX + queue)), ("HVALS", self._k(LEASE_KEY))]
        with self._errors():
            *lengths, delayed, leases = self.client.pipeline(cmds)
        suffix = b"\n" + queue.encode("utf-8")
        leased = sum(1 for v in leases if v.endswith(suffix))
        return QueueStats(ready=sum(lengths), delayed=delayed, leased=leased,
                          extra={"by_priority_step": dict(zip(self.steps, lengths, strict=True))})


__all__ = ["RedisBroker", "SEP", "DEFAULT_PRIORITY_STEPS"]
