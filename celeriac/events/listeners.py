"""Who listens to events on the embedded SQLite broker.

On Redis an event nobody subscribed to costs one ``PUBLISH`` and goes nowhere.
On SQLite every broadcast is a write into the queue's own file, so workers only
write events while a receiver is listening: each receiver keeps a row here,
refreshed every few seconds while it captures, deleted when it stops.  A
worker process looks at the table at most once a second (and at once when a
receiver's ``heartbeat`` wake-up arrives), so a receiver sees the events sent
from about a second after it started: the at-most-once delivery of pub/sub.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._sqlite import SQLiteDB

LISTENER_TTL = 15.0      # a receiver that stopped refreshing its row is gone after this
REFRESH_SECONDS = 5.0    # a capturing receiver refreshes its row this often
CHECK_SECONDS = 1.0      # a sender looks for listeners at most this often

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_event_listeners (
    id      TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    expires REAL NOT NULL
);
"""
Q_LISTEN = ("INSERT INTO celeriac_event_listeners (id, channel, expires) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET expires = excluded.expires")
Q_PRUNE = "DELETE FROM celeriac_event_listeners WHERE expires < ?"
Q_LEAVE = "DELETE FROM celeriac_event_listeners WHERE id = ?"
Q_ANY = "SELECT 1 FROM celeriac_event_listeners WHERE channel = ? AND expires >= ? LIMIT 1"

_dbs: dict[str, SQLiteDB] = {}
_lock = threading.Lock()


def _db(path: str) -> SQLiteDB:
    with _lock:
        db = _dbs.get(path)
        if db is None:
            db = _dbs[path] = SQLiteDB(path, SCHEMA)
        return db


def listen(path: str, listener_id: str, channel: str) -> None:
    now = time.time()

    def tx(c: Any) -> None:
        c.execute(Q_PRUNE, (now,))
        c.execute(Q_LISTEN, (listener_id, channel, now + LISTENER_TTL))

    _db(path).write(tx)


def leave(path: str, listener_id: str) -> None:
    _db(path).write(lambda c: c.execute(Q_LEAVE, (listener_id,)) and None)


class ListenerCheck:
    """``bool(check)``: is anyone listening to ``channel`` (looked up at most every second)?"""

    def __init__(self, path: str, channel: str) -> None:
        self.path = path
        self.channel = channel
        self.answer = False
        self.next_check = 0.0

    def refresh(self) -> None:
        self.next_check = 0.0

    def __bool__(self) -> bool:
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + CHECK_SECONDS
            try:
                self.answer = bool(_db(self.path).read(Q_ANY, (self.channel, time.time())))
            except Exception:
                self.answer = True  # when in doubt, send
        return self.answer
