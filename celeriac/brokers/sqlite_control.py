"""Broadcast, reply queues and revoked ids on the embedded SQLite broker.

``celeriac_broadcast`` is an append-only log: every subscriber keeps its own
cursor (the last id it read) and reads past it; rows are pruned a minute after
they were written.  ``celeriac_replies`` holds replies until the reader takes
them.  ``celeriac_revoked`` keeps revoked task ids until they expire, so a
worker that starts later still knows them.  Writers ring a doorbell so waiting
readers wake at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._bell import Bell
from .._sqlite import SQLiteDB
from .base import Subscription

KEEP_SECONDS = 60.0
POLL_SECONDS = 0.5  # a missed doorbell costs at most this

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_broadcast (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_replies (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    queue   TEXT NOT NULL,
    created REAL NOT NULL,
    ticket  TEXT,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_replies_queue ON celeriac_replies (queue, id);
CREATE TABLE IF NOT EXISTS celeriac_revoked (
    task_id TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
"""

Q_BROADCAST = "INSERT INTO celeriac_broadcast (channel, created, expires, payload) VALUES (?, ?, ?, ?)"
Q_BROADCAST_PRUNE = "DELETE FROM celeriac_broadcast WHERE created < ? OR (expires > 0 AND expires < ?)"
Q_BROADCAST_CURSOR = "SELECT COALESCE(MAX(id), 0) FROM celeriac_broadcast"
Q_BROADCAST_READ = ("SELECT id, expires, payload FROM celeriac_broadcast "
                    "WHERE channel = ? AND id > ? ORDER BY id")
Q_REPLY = "INSERT INTO celeriac_replies (queue, created, ticket, payload) VALUES (?, ?, ?, ?)"
Q_REPLY_PRUNE = "DELETE FROM celeriac_replies WHERE created < ?"
Q_REPLY_TAKE = "DELETE FROM celeriac_replies WHERE queue = ? RETURNING id, payload"
Q_REPLY_PEEK = "SELECT 1 FROM celeriac_replies WHERE queue = ? LIMIT 1"
Q_REPLY_DROP = "DELETE FROM celeriac_replies WHERE queue = ?"
Q_REVOKE = ("INSERT INTO celeriac_revoked (task_id, expires) VALUES (?, ?) "
            "ON CONFLICT(task_id) DO UPDATE SET expires = MAX(expires, excluded.expires)")
Q_REVOKED_PRUNE = "DELETE FROM celeriac_revoked WHERE expires < ?"
Q_REVOKED = "SELECT task_id FROM celeriac_revoked WHERE expires >= ?"


class _BroadcastReader(Subscription):
    def __init__(self, db: SQLiteDB, bell: Bell, channel: str) -> None:
        self.db, self.bell, self.channel = db, bell, channel
        bell.arm()
        self.cursor = db.read(Q_BROADCAST_CURSOR)[0][0]

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.db.read(Q_BROADCAST_READ, (self.channel, self.cursor))
            if rows:
                self.cursor = rows[-1][0]
                now = time.time()
                out = [bytes(r[2]) for r in rows if not r[1] or r[1] >= now]
                if out:
                    return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self.bell.wait(min(remaining, POLL_SECONDS))

    def close(self) -> None:
        self.bell.close()


class _ReplyReader(Subscription):
    def __init__(self, db: SQLiteDB, bell: Bell, queue: str) -> None:
        self.db, self.bell, self.queue = db, bell, queue
        bell.arm()

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            if self.db.read(Q_REPLY_PEEK, (self.queue,)):
                rows = self.db.write(lambda c: c.execute(Q_REPLY_TAKE, (self.queue,)).fetchall())
                if rows:
                    return [bytes(r[1]) for r in sorted(rows)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self.bell.wait(min(remaining, POLL_SECONDS))

    def close(self) -> None:
        self.bell.close()
        self.db.write(lambda c: c.execute(Q_REPLY_DROP, (self.queue,)) and None)


class SQLiteControlMixin:
    """Mixed into :class:`SQLiteBroker`; needs ``self.path``."""

    path: str
    _control_db: SQLiteDB | None = None
    _ringers: dict[str, Bell] | None = None

    def _cdb(self) -> SQLiteDB:
        if self._control_db is None:
            self._control_db = SQLiteDB(self.path, SCHEMA)
        return self._control_db

    def _ring(self, channel: str) -> None:
        if self._ringers is None:
            self._ringers = {}
        bell = self._ringers.get(channel)
        if bell is None:
            bell = self._ringers[channel] = Bell(self.path, channel)
        bell.ring()

    def _close_control(self) -> None:
        for bell in (self._ringers or {}).values():
            bell.close()
        self._ringers = None
        if self._control_db is not None:
            self._control_db.close()

    def broadcast(self, channel: str, payload: bytes, ttl: float | None = None) -> None:
        now = time.time()
        expires = now + ttl if ttl else 0.0

        def tx(c: Any) -> None:
            c.execute(Q_BROADCAST_PRUNE, (now - KEEP_SECONDS, now))
            c.execute(Q_BROADCAST, (channel, now, expires, payload))

        self._cdb().write(tx)
        self._ring("b")

    def subscribe_broadcast(self, channel: str) -> Subscription:
        return _BroadcastReader(self._cdb(), Bell(self.path, "b"), channel)

    def reply(self, queue: str, payload: bytes, ticket: str | None = None) -> None:
        now = time.time()

        def tx(c: Any) -> None:
            c.execute(Q_REPLY_PRUNE, (now - KEEP_SECONDS,))
            c.execute(Q_REPLY, (queue, now, ticket, payload))

        self._cdb().write(tx)
        self._ring("r")

    def subscribe_replies(self, queue: str) -> Subscription:
        return _ReplyReader(self._cdb(), Bell(self.path, "r"), queue)

    def store_revoked(self, task_ids: Sequence[str], expires: float) -> None:
        until = time.time() + expires
        rows = [(tid, until) for tid in task_ids]
        if rows:
            self._cdb().write(lambda c: c.executemany(Q_REVOKE, rows) and None)

    def load_revoked(self) -> list[str]:
        now = time.time()
        db = self._cdb()
        db.write(lambda c: c.execute(Q_REVOKED_PRUNE, (now,)) and None)
        return [r[0] for r in db.read(Q_REVOKED, (now,))]
