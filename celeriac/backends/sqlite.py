"""Results in the embedded SQLite file (table ``celeriac_results``), next to the queue."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._bell import Bell
from .._sqlite import SQLiteDB, sqlite_path
from .base import ResultBackend, StoredMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_results_expiry ON celeriac_results (expires_at)
    WHERE expires_at IS NOT NULL;
"""

Q_UPSERT = ("INSERT INTO celeriac_results (task_id, status, payload, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, payload = excluded.payload, "
            "expires_at = excluded.expires_at WHERE celeriac_results.status != 'SUCCESS'")
Q_GET = "SELECT task_id, payload FROM celeriac_results WHERE task_id IN ({qs}) AND (expires_at IS NULL OR expires_at > ?)"
Q_DELETE = "DELETE FROM celeriac_results WHERE task_id = ?"
Q_CLEANUP = "DELETE FROM celeriac_results WHERE expires_at IS NOT NULL AND expires_at <= ?"


class SQLiteBackend(ResultBackend):
    push_wakeups = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = sqlite_path(url)
        self.db = SQLiteDB(self.path, SCHEMA)
        self.bell = Bell(self.path, "r")
        self._next_cleanup = 0.0

    def connect(self) -> None:
        self.db.conn()

    def close(self) -> None:
        self.bell.close()
        self.db.close()

    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        now = time.time()
        exp = None if self.expires is None else now + self.expires
        rows = [(m.task_id, m.status, m.payload, exp) for m in items]
        cleanup = now >= self._next_cleanup and self.expires is not None
        if cleanup:
            self._next_cleanup = now + 60.0

        def tx(c: Any) -> None:
            c.executemany(Q_UPSERT, rows)
            if cleanup:
                c.execute(Q_CLEANUP, (now,))

        self.db.write(tx)
        self.bell.ring()

    def _get_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        ids = list(task_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            sql = Q_GET.format(qs=",".join("?" * len(chunk)))
            for tid, payload in self.db.read(sql, (*chunk, time.time())):
                out[tid] = bytes(payload)
        return out

    def _delete(self, task_ids: Sequence[str]) -> None:
        self.db.write(lambda c: c.executemany(Q_DELETE, [(t,) for t in task_ids]) and None)

    def prepare_wait(self, task_ids: Sequence[str]) -> None:
        self.bell.arm()

    def _wait(self, task_ids: Sequence[str], timeout: float) -> None:
        # Wake on any ring but re-check at least every 0.5 s, so a missed ring costs little.
        self.bell.wait(min(timeout, 0.5))

    def _cleanup(self) -> int:
        return self.db.write(lambda c: c.execute(Q_CLEANUP, (time.time(),)).rowcount)
