"""The embedded broker: one SQLite file (WAL) shared by every process on a machine.

Layout (named queries below): ``celeriac_messages`` holds every message with a
``state`` — 0 ready, 1 leased, 2 delayed.  ``fetch`` promotes due delayed
messages and expired leases, then leases a batch in one ``UPDATE … RETURNING``.
Dead letters live in ``celeriac_dead_letters``.  Producers ring a doorbell so
idle consumers wake at once instead of polling.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from .._bell import Bell
from .._fastid import uuid4_many
from .._sqlite import SQLiteDB, sqlite_path
from ..protocol.bulk import BulkMessages
from ..protocol.message import from_kombu_json, to_kombu_json
from .base import Broker, Capabilities, DeadLetter, Delivery, PublishItem, QueueStats, take_tokens
from .sqlite_control import SQLiteControlMixin

READY, LEASED, DELAYED = 0, 1, 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT NOT NULL,
    state       INTEGER NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    started     INTEGER NOT NULL DEFAULT 0,
    redelivered INTEGER NOT NULL DEFAULT 0,
    tag         TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_messages_ready
    ON celeriac_messages (queue, priority, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS celeriac_messages_delayed
    ON celeriac_messages (not_before) WHERE state = 2;
CREATE INDEX IF NOT EXISTS celeriac_messages_leased
    ON celeriac_messages (lease_owner, lease_until) WHERE state = 1;
CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    queue     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    task_name TEXT,
    task_id   TEXT,
    failed_at REAL NOT NULL,
    payload   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_rate_limits (
    key    TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    stamp  REAL NOT NULL
);
"""

Q_INSERT = ("INSERT INTO celeriac_messages (queue, state, priority, not_before, tag, payload) "
            "VALUES (?, ?, ?, ?, ?, ?)")
Q_PROMOTE_DELAYED = "UPDATE celeriac_messages SET state = 0 WHERE state = 2 AND not_before <= ?"
Q_RECLAIM_EXPIRED = ("UPDATE celeriac_messages SET state = 0, lease_owner = NULL, lease_until = 0, "
                     "redelivered = 1 WHERE state = 1 AND lease_until < ?")
Q_NEXT_DELAYED = "SELECT MIN(not_before) FROM celeriac_messages WHERE state = 2"
# A read (no write lock in WAL mode): is there anything to lease, promote or reclaim?
Q_PEEK = ("SELECT EXISTS (SELECT 1 FROM celeriac_messages WHERE state = 0 AND queue IN ({qs})) "
          "OR EXISTS (SELECT 1 FROM celeriac_messages WHERE state = 2 AND not_before <= ?)")
Q_LEASE = ("UPDATE celeriac_messages SET state = 1, lease_owner = ?, lease_until = ? "
           "WHERE id IN (SELECT id FROM celeriac_messages WHERE state = 0 AND queue IN ({qs}) "
           "ORDER BY priority, id LIMIT ?) "
           "RETURNING id, queue, priority, tag, payload, redelivered, started")
Q_ACK = "DELETE FROM celeriac_messages WHERE id = ?"
Q_REQUEUE = ("UPDATE celeriac_messages SET state = ?, not_before = ?, lease_owner = NULL, "
             "lease_until = 0, redelivered = 1 WHERE id = ?")
Q_HEARTBEAT = "UPDATE celeriac_messages SET lease_until = ? WHERE state = 1 AND lease_owner = ?"
Q_STARTED = "UPDATE celeriac_messages SET started = 1 WHERE id = ?"
Q_RELEASE = ("UPDATE celeriac_messages SET state = 0, lease_owner = NULL, lease_until = 0, "
             "redelivered = 1 WHERE state = 1 AND lease_owner = ?")
Q_DEAD = ("INSERT INTO celeriac_dead_letters (queue, reason, task_name, task_id, failed_at, payload) "
          "VALUES (?, ?, ?, ?, ?, ?)")
Q_DEAD_LIST = ("SELECT id, queue, reason, payload, failed_at, task_name, task_id "
               "FROM celeriac_dead_letters ORDER BY id DESC LIMIT ?")
Q_STATS = "SELECT state, COUNT(*) FROM celeriac_messages WHERE queue = ? GROUP BY state"
Q_PURGE = "DELETE FROM celeriac_messages WHERE queue = ? AND state IN (0, 2)"
Q_BUCKET_GET = "SELECT tokens, stamp FROM celeriac_rate_limits WHERE key = ?"
Q_BUCKET_SET = ("INSERT INTO celeriac_rate_limits (key, tokens, stamp) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, stamp = excluded.stamp")


class SQLiteBroker(SQLiteControlMixin, Broker):
    capabilities = Capabilities(native_delay=True, priority=True, broadcast=True,
                                global_rate_limit=True, leases=True)

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = sqlite_path(url)
        self.db = SQLiteDB(self.path, SCHEMA)
        self.bell = Bell(self.path, "q")
        self._next_reclaim = 0.0
        self._last_lease = 0.0

    def connect(self) -> None:
        self.db.conn()

    def close(self) -> None:
        self._close_control()
        self.bell.close()
        self.db.close()

    # -- producing -------------------------------------------------------------
    def publish_many(self, items: Sequence[PublishItem]) -> None:
        now = time.time()
        rows = []
        for it in items:
            tag = str(uuid.uuid4())
            nb = it.not_before or 0.0
            state = DELAYED if nb > now else READY
            rows.append((it.queue, state, it.envelope.priority, nb, tag,
                         to_kombu_json(it.envelope, it.exchange, it.queue, tag)))
        self.db.write(lambda c: c.executemany(Q_INSERT, rows) and None)
        self.bell.ring()

    def publish_bulk(self, batch: BulkMessages, queue: str, exchange: str = "") -> None:
        tags = uuid4_many(len(batch))
        priority = batch.proto.priority
        rows = [(queue, READY, priority, 0.0, tag, text)
                for tag, text in zip(tags, batch.kombu_json(exchange, queue, tags), strict=True)]
        self.db.write(lambda c: c.executemany(Q_INSERT, rows) and None)
        self.bell.ring()

    # -- consuming -------------------------------------------------------------
    def _lease(self, queues: Sequence[str], max_count: int, consumer_id: str, settle: Any = None) -> list[Any]:
        now = time.time()
        reclaim = now >= self._next_reclaim
        qs = ",".join("?" * len(queues))
        if settle is None and not reclaim and not self.db.read(Q_PEEK.format(qs=qs), (*queues, now))[0][0]:
            return []
        if reclaim:
            self._next_reclaim = now + 1.0
        sql = Q_LEASE.format(qs=qs)

        def tx(c: Any) -> list[Any]:
            if settle is not None:
                settle(c)
            c.execute(Q_PROMOTE_DELAYED, (now,))
            if reclaim:
                c.execute(Q_RECLAIM_EXPIRED, (now,))
            return c.execute(sql, (consumer_id, now + self.lease_seconds, *queues, max_count)).fetchall()

        return self.db.write(tx)

    def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
              consumer_id: str, settle: Any = None) -> list[Delivery]:
        """``settle(conn)``, when given, runs first in the same transaction (acks and
        results of the previous batch: one write per batch on the embedded store)."""
        deadline = time.monotonic() + timeout
        self.bell.arm()
        woken = False
        while True:
            if woken and time.monotonic() - self._last_lease < 0.05:
                # Under load, let a few more arrive: fewer, larger leases, and rings sent
                # meanwhile wake nobody.  An idle consumer (no lease for 50 ms) leases at once.
                time.sleep(0.002)
            rows = self._lease(queues, max_count, consumer_id, settle) if max_count > 0 else []
            if settle is not None and hasattr(settle, "committed"):
                settle.committed()
            settle = None
            if rows:
                self._last_lease = time.monotonic()
                rows.sort(key=lambda r: (r[2], r[0]))
                return [
                    Delivery(from_kombu_json(r[4]), r[1], r[3], self, redelivered=bool(r[5]),
                             started=bool(r[6]), raw=r[0])
                    for r in rows
                ]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            nxt = self.db.read(Q_NEXT_DELAYED)[0][0]
            wait = remaining if nxt is None else min(remaining, max(nxt - time.time(), 0.0005))
            woken = self.bell.wait(min(wait, 1.0))

    def ack_statements(self, deliveries: Sequence[Delivery]) -> Any:
        ids = [(d.raw,) for d in deliveries]
        return lambda c: c.executemany(Q_ACK, ids) and None

    def ack(self, deliveries: Iterable[Delivery], also: Any = None) -> None:
        """Ack; ``also(conn)`` runs in the same transaction (results stored in this file)."""
        ids = [(d.raw,) for d in deliveries]

        def tx(c: Any) -> None:
            if also is not None:
                also(c)
            if ids:
                c.executemany(Q_ACK, ids)

        if ids or also is not None:
            self.db.write(tx)

    def requeue(self, deliveries: Iterable[Delivery], delay: float | None = None) -> None:
        state, nb = (DELAYED, time.time() + delay) if delay else (READY, 0.0)
        rows = [(state, nb, d.raw) for d in deliveries]
        if rows:
            self.db.write(lambda c: c.executemany(Q_REQUEUE, rows) and None)
            self.bell.ring()

    def heartbeat(self, consumer_id: str, running: Sequence[Delivery] = ()) -> None:
        until = time.time() + self.lease_seconds
        started = [(d.raw,) for d in running]

        def tx(c: Any) -> None:
            c.execute(Q_HEARTBEAT, (until, consumer_id))
            if started:
                c.executemany(Q_STARTED, started)

        self.db.write(tx)

    def release_consumer(self, consumer_id: str) -> int:
        n = self.db.write(lambda c: c.execute(Q_RELEASE, (consumer_id,)).rowcount)
        if n:
            self.bell.ring()
        return n

    # -- global rate limits ----------------------------------------------------
    def acquire_tokens(self, key: str, rate: float, burst: float = 1.0, n: float = 1.0) -> float:
        def tx(c: Any) -> float:
            at = time.time()
            row = c.execute(Q_BUCKET_GET, (key,)).fetchone()
            tokens, wait = take_tokens(None if row is None else row[0], 0.0 if row is None else row[1],
                                       at, rate, burst, n)
            c.execute(Q_BUCKET_SET, (key, tokens, at))
            return wait

        return self.db.write(tx)

    # -- dead letters ----------------------------------------------------------
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        h = delivery.envelope.headers
        payload = to_kombu_json(delivery.envelope, "", delivery.queue, delivery.tag)

        def tx(c: Any) -> None:
            c.execute(Q_DEAD, (delivery.queue, reason, h.get("task"), h.get("id"), time.time(), payload))
            c.execute(Q_ACK, (delivery.raw,))

        self.db.write(tx)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [DeadLetter(str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6])
                for r in self.db.read(Q_DEAD_LIST, (limit,))]

    def replay_dead_letter(self, dead_id: str) -> bool:
        rows = self.db.read("SELECT queue, payload FROM celeriac_dead_letters WHERE id = ?", (int(dead_id),))
        if not rows:
            return False
        queue, payload = rows[0]
        env = from_kombu_json(payload)

        def tx(c: Any) -> None:
            tag = str(uuid.uuid4())
            c.execute(Q_INSERT, (queue, READY, env.priority, 0.0, tag, to_kombu_json(env, "", queue, tag)))
            c.execute("DELETE FROM celeriac_dead_letters WHERE id = ?", (int(dead_id),))

        self.db.write(tx)
        self.bell.ring()
        return True

    # -- admin -----------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return self.db.write(lambda c: c.execute(Q_PURGE, (queue,)).rowcount)

    def stats(self, queue: str) -> QueueStats:
        counts = dict(self.db.read(Q_STATS, (queue,)))
        return QueueStats(ready=counts.get(READY, 0), delayed=counts.get(DELAYED, 0),
                          leased=counts.get(LEASED, 0))

    def leased(self, consumer_id: str) -> list[Delivery]:
        rows = self.db.read(
            "SELECT id, queue, tag, payload, redelivered, started FROM celeriac_messages "
            "WHERE state = 1 AND lease_owner = ? ORDER BY id", (consumer_id,))
        return [Delivery(from_kombu_json(r[3]), r[1], r[2], self, bool(r[4]), bool(r[5]), r[0]) for r in rows]
