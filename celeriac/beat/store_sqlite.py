"""Beat's store in the SQLite broker's file: two tables, named queries, one transaction per step.

Layout::

    celeriac_beat_entries  one row per entry: definition (task, schedule JSON,
                           args, kwargs, options, enabled, source) and state
                           (next_run, last_run, total_run_count, pending_*);
                           times are integer microseconds since the epoch
    celeriac_beat_lease    one row ('beat', owner, expires): the leader lease

A claim is ``UPDATE ... WHERE name = ? AND next_run = ?`` inside ``BEGIN
IMMEDIATE``: SQLite serialises writers, so exactly one scheduler sees
``rowcount == 1``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from .._sqlite import SQLiteDB
from ..protocol.codecs import json_dumps, json_loads
from .entries import Entry, canonical_json
from .store import LEASE_NAME, BeatStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_beat_entries (
    name            TEXT PRIMARY KEY,
    task            TEXT NOT NULL,
    schedule        TEXT NOT NULL,
    args            TEXT NOT NULL DEFAULT '[]',
    kwargs          TEXT NOT NULL DEFAULT '{}',
    options         TEXT NOT NULL DEFAULT '{}',
    enabled         INTEGER NOT NULL DEFAULT 1,
    source          TEXT NOT NULL DEFAULT 'api',
    next_run        INTEGER NOT NULL,
    last_run        INTEGER,
    total_run_count INTEGER NOT NULL DEFAULT 0,
    pending_tick    INTEGER,
    pending_owner   TEXT,
    pending_since   INTEGER,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_beat_entries_due
    ON celeriac_beat_entries (next_run) WHERE enabled = 1;
CREATE TABLE IF NOT EXISTS celeriac_beat_lease (
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires INTEGER NOT NULL
);
"""

_COLS = ("name, task, schedule, args, kwargs, options, enabled, source, next_run, last_run, "
         "total_run_count, pending_tick, pending_owner, pending_since")
Q_GET = f"SELECT {_COLS} FROM celeriac_beat_entries WHERE name = ?"
Q_ALL = f"SELECT {_COLS} FROM celeriac_beat_entries ORDER BY name"
Q_DUE = f"SELECT {_COLS} FROM celeriac_beat_entries WHERE enabled = 1 AND next_run <= ? ORDER BY next_run, name"
Q_PENDING = f"SELECT {_COLS} FROM celeriac_beat_entries WHERE pending_tick IS NOT NULL"
Q_NEXT_DUE = "SELECT MIN(next_run) FROM celeriac_beat_entries WHERE enabled = 1"
Q_SCHEDULE_OF = "SELECT schedule FROM celeriac_beat_entries WHERE name = ?"
Q_INSERT = ("INSERT INTO celeriac_beat_entries (name, task, schedule, args, kwargs, options, enabled, "
            "source, next_run, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
Q_RESCHEDULE = "UPDATE celeriac_beat_entries SET schedule = ?, next_run = ? WHERE name = ?"
Q_REDEFINE = ("UPDATE celeriac_beat_entries SET task = ?, args = ?, kwargs = ?, options = ?, "
              "source = COALESCE(?, source), updated_at = ? WHERE name = ?")
Q_DELETE = "DELETE FROM celeriac_beat_entries WHERE name = ?"
Q_DELETE_CONFIG = "DELETE FROM celeriac_beat_entries WHERE source = 'config' AND name NOT IN ({names})"
Q_ENABLE = ("UPDATE celeriac_beat_entries SET next_run = CASE WHEN enabled = 1 THEN next_run ELSE ? END, "
            "enabled = 1, updated_at = ? WHERE name = ?")
Q_DISABLE = "UPDATE celeriac_beat_entries SET enabled = 0, updated_at = ? WHERE name = ?"
Q_CLAIM = ("UPDATE celeriac_beat_entries SET next_run = ?, last_run = ?, "
           "total_run_count = total_run_count + 1, pending_tick = ?, pending_owner = ?, pending_since = ? "
           "WHERE name = ? AND next_run = ? AND enabled = 1 AND pending_tick IS NULL")
Q_ADVANCE = ("UPDATE celeriac_beat_entries SET next_run = ? "
             "WHERE name = ? AND next_run = ? AND enabled = 1 AND pending_tick IS NULL")
Q_CONFIRM = ("UPDATE celeriac_beat_entries SET pending_tick = NULL, pending_owner = NULL, "
             "pending_since = NULL WHERE name = ? AND pending_tick = ?")
Q_TAKE_PENDING = ("UPDATE celeriac_beat_entries SET pending_owner = ?, pending_since = ? "
                  "WHERE name = ? AND pending_tick = ? AND pending_owner = ?")
Q_ACQUIRE = ("INSERT INTO celeriac_beat_lease (name, owner, expires) VALUES (?, ?, ?) "
             "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
             "WHERE celeriac_beat_lease.owner = excluded.owner OR celeriac_beat_lease.expires < ?")
Q_RELEASE = "DELETE FROM celeriac_beat_lease WHERE name = ? AND owner = ?"
Q_LEADER = "SELECT owner, expires FROM celeriac_beat_lease WHERE name = ? AND expires >= ?"


def _row(r: Sequence[Any]) -> Entry:
    return Entry(name=r[0], task=r[1], schedule_dict=json.loads(r[2]), args=json_loads(r[3]),
                 kwargs=json_loads(r[4]), options=json_loads(r[5]), enabled=bool(r[6]), source=r[7],
                 next_run=r[8], last_run=r[9], total_run_count=r[10], pending_tick=r[11],
                 pending_owner=r[12], pending_since=r[13])


class SQLiteBeatStore(BeatStore):
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = SQLiteDB(path, SCHEMA)

    def describe(self) -> str:
        return f"sqlite {self.path} (tables celeriac_beat_entries, celeriac_beat_lease)"

    def close(self) -> None:
        self.db.close()

    # -- definitions -------------------------------------------------------------
    @staticmethod
    def _upsert(c: sqlite3.Connection, e: Entry, source: str | None) -> None:
        sched = canonical_json(e.schedule_dict)
        row = c.execute(Q_SCHEDULE_OF, (e.name,)).fetchone()
        now = time.time()
        if row is None:
            c.execute(Q_INSERT, (e.name, e.task, sched, json_dumps(e.args), json_dumps(e.kwargs),
                                 json_dumps(e.options), int(e.enabled), source or e.source, e.next_run, now))
            return
        if row[0] != sched:
            c.execute(Q_RESCHEDULE, (sched, e.next_run, e.name))
        c.execute(Q_REDEFINE, (e.task, json_dumps(e.args), json_dumps(e.kwargs), json_dumps(e.options),
                               source, now, e.name))

    def sync_config(self, entries: Sequence[Entry]) -> None:
        names = [e.name for e in entries]

        def tx(c: sqlite3.Connection) -> None:
            c.execute(Q_DELETE_CONFIG.format(names=",".join("?" * len(names))), names)
            for e in entries:
                self._upsert(c, e, "config")

        self.db.write(tx)

    def put(self, entry: Entry, replace: bool = False) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            if not replace and c.execute(Q_SCHEDULE_OF, (entry.name,)).fetchone() is not None:
                return False
            self._upsert(c, entry, None)
            return True

        return self.db.write(tx)

    def delete(self, name: str) -> bool:
        return self.db.write(lambda c: c.execute(Q_DELETE, (name,)).rowcount) == 1

    def set_enabled(self, name: str, enabled: bool, next_run: int) -> bool:
        if enabled:
            n = self.db.write(lambda c: c.execute(Q_ENABLE, (next_run, time.time(), name)).rowcount)
        else:
            n = self.db.write(lambda c: c.execute(Q_DISABLE, (time.time(), name)).rowcount)
        return n == 1

    def get(self, name: str) -> Entry | None:
        rows = self.db.read(Q_GET, (name,))
        return _row(rows[0]) if rows else None

    def entries(self) -> list[Entry]:
        return [_row(r) for r in self.db.read(Q_ALL)]

    def due(self, now: int) -> list[Entry]:
        return [_row(r) for r in self.db.read(Q_DUE, (now,))]

    def next_due(self) -> int | None:
        value = self.db.read(Q_NEXT_DUE)[0][0]
        return None if value is None else int(value)

    # -- ticks -----------------------------------------------------------------
    def claim(self, name: str, expected: int, new_next: int, tick: int, owner: str, now: int) -> bool:
        args = (new_next, tick, tick, owner, now, name, expected)
        return self.db.write(lambda c: c.execute(Q_CLAIM, args).rowcount) == 1

    def advance(self, name: str, expected: int, new_next: int) -> bool:
        return self.db.write(lambda c: c.execute(Q_ADVANCE, (new_next, name, expected)).rowcount) == 1

    def confirm(self, name: str, tick: int) -> None:
        self.db.write(lambda c: c.execute(Q_CONFIRM, (name, tick)) and None)

    def pending(self) -> list[Entry]:
        return [_row(r) for r in self.db.read(Q_PENDING)]

    def take_pending(self, name: str, tick: int, old_owner: str, owner: str, now: int) -> bool:
        args = (owner, now, name, tick, old_owner)
        return self.db.write(lambda c: c.execute(Q_TAKE_PENDING, args).rowcount) == 1

    # -- leader lease ------------------------------------------------------------
    def acquire(self, owner: str, ttl: int, now: int) -> bool:
        args = (LEASE_NAME, owner, now + ttl, now)
        return self.db.write(lambda c: c.execute(Q_ACQUIRE, args).rowcount) == 1

    def release(self, owner: str) -> None:
        self.db.write(lambda c: c.execute(Q_RELEASE, (LEASE_NAME, owner)) and None)

    def leader(self, now: int) -> tuple[str, int] | None:
        rows = self.db.read(Q_LEADER, (LEASE_NAME, now))
        return (rows[0][0], int(rows[0][1])) if rows else None
