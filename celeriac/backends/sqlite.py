"""Results in the embedded SQLite file (table ``celeriac_results``), next to the queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from .._bell import Bell
from .._sqlite import SQLiteDB, sqlite_path
from .base import CHORD_CLAIM_SECONDS, CHORD_DONE_SECONDS, ChordReady, ResultBackend, StoredMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_results_expiry ON celeriac_results (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_chords (
    gid         TEXT PRIMARY KEY,
    size        INTEGER,            -- header results expected; NULL until chord_set_size
    done        TEXT,               -- NULL: open; a claim token: body being sent; 'done': finished
    claim_until REAL,
    expires_at  REAL
);
CREATE TABLE IF NOT EXISTS celeriac_chord_parts (
    gid        TEXT NOT NULL,
    idx        INTEGER NOT NULL,    -- group_index (NO_INDEX when the task had none)
    task_id    TEXT NOT NULL,
    state      TEXT NOT NULL,
    payload    BLOB NOT NULL,       -- [1, task_id, state, result] encoded, as in Redis's .j zset
    expires_at REAL,
    PRIMARY KEY (gid, task_id, idx)
);
"""

Q_UPSERT = ("INSERT INTO celeriac_results (task_id, status, payload, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, payload = excluded.payload, "
            "expires_at = excluded.expires_at WHERE celeriac_results.status != 'SUCCESS' "
            # a retried attempt may finish before the worker that retried it stores RETRY
            "AND NOT (excluded.status = 'RETRY' AND celeriac_results.status IN ('FAILURE', 'REVOKED'))")
Q_GET = "SELECT task_id, payload FROM celeriac_results WHERE task_id IN ({qs}) AND (expires_at IS NULL OR expires_at > ?)"
Q_DELETE = "DELETE FROM celeriac_results WHERE task_id = ?"
Q_CLEANUP = "DELETE FROM celeriac_results WHERE expires_at IS NOT NULL AND expires_at <= ?"
Q_CHORD_CLEANUP = ("DELETE FROM celeriac_chords WHERE expires_at IS NOT NULL AND expires_at <= ?",
                   "DELETE FROM celeriac_chord_parts WHERE expires_at IS NOT NULL AND expires_at <= ?")
Q_CHORD_SET_SIZE = ("INSERT INTO celeriac_chords (gid, size, done, claim_until, expires_at) "
                    "VALUES (?, ?, NULL, NULL, ?) ON CONFLICT (gid) DO UPDATE SET size = excluded.size, "
                    "done = NULL, claim_until = NULL, expires_at = excluded.expires_at")
Q_CHORD_GET = "SELECT size, done, claim_until FROM celeriac_chords WHERE gid = ?"
Q_CHORD_ADD_PART = ("INSERT OR IGNORE INTO celeriac_chord_parts (gid, idx, task_id, state, payload, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)")
Q_CHORD_TOUCH = ("UPDATE celeriac_chords SET expires_at = ? WHERE gid = ?",
                 "UPDATE celeriac_chord_parts SET expires_at = ? WHERE gid = ?")
Q_CHORD_COUNT = "SELECT COUNT(*) FROM celeriac_chord_parts WHERE gid = ?"
Q_CHORD_CLAIM = "UPDATE celeriac_chords SET done = ?, claim_until = ? WHERE gid = ?"
Q_CHORD_PARTS = "SELECT payload FROM celeriac_chord_parts WHERE gid = ? ORDER BY idx, task_id"
Q_CHORD_DONE = ("UPDATE celeriac_chords SET done = 'done', size = NULL, claim_until = NULL, expires_at = ? "
                "WHERE gid = ? AND done = ?")
Q_CHORD_DROP_PARTS = "DELETE FROM celeriac_chord_parts WHERE gid = ?"
NO_INDEX = 2 ** 62      # sorts a part without group_index last, like Redis's +inf score


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

    def writer(self, metas: Sequence[dict[str, Any]]) -> Any:
        """The statements that store ``metas``, for a caller's transaction on this same file."""
        items = [StoredMeta(m["task_id"], m["status"], self.encode(m)) for m in metas]
        now = time.time()
        exp = None if self.expires is None else now + self.expires
        rows = [(m.task_id, m.status, m.payload, exp) for m in items]
        cleanup = self._cleanup_due(now)

        def write(c: Any) -> None:
            c.executemany(Q_UPSERT, rows)
            if cleanup:
                self._delete_expired(c, now)

        return write

    def _cleanup_due(self, now: float) -> bool:
        """Expired rows are deleted by a write at most every min(result_expires, 60) s."""
        if self.expires is None or now < self._next_cleanup:
            return False
        self._next_cleanup = now + min(60.0, max(float(self.expires), 1.0))
        return True

    @staticmethod
    def _delete_expired(c: Any, now: float) -> None:
        c.execute(Q_CLEANUP, (now,))
        for q in Q_CHORD_CLEANUP:
            c.execute(q, (now,))

    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        now = time.time()
        exp = None if self.expires is None else now + self.expires
        rows = [(m.task_id, m.status, m.payload, exp) for m in items]
        cleanup = self._cleanup_due(now)

        def tx(c: Any) -> None:
            c.executemany(Q_UPSERT, rows)
            if cleanup:
                self._delete_expired(c, now)

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
        def tx(c: Any) -> int:
            now = time.time()
            for q in Q_CHORD_CLEANUP:
                c.execute(q, (now,))
            return int(c.execute(Q_CLEANUP, (now,)).rowcount)

        return self.db.write(tx)

    # -- chords (one transaction each; see ResultBackend.chord_join) ------------------
    def _chord_expiry(self) -> float | None:
        return None if not self.expires else time.time() + self.expires

    def chord_set_size(self, group_id: str, size: int) -> None:
        self.db.write(lambda c: c.execute(Q_CHORD_SET_SIZE, (group_id, int(size), self._chord_expiry())) and None)

    def chord_join(self, group_id: str, task_id: str, group_index: int | None, state: str,
                   result: Any) -> ChordReady | None:
        member = self.encode_chord_part(task_id, state, result)
        idx = NO_INDEX if group_index is None else int(group_index)
        exp = self._chord_expiry()
        token = uuid.uuid4().hex

        def tx(c: Any) -> list[bytes] | None:
            row = c.execute(Q_CHORD_GET, (group_id,)).fetchone()
            if row is not None and row[1] == "done":
                return None
            c.execute(Q_CHORD_ADD_PART, (group_id, idx, task_id, state, member, exp))
            for q in Q_CHORD_TOUCH:
                c.execute(q, (exp, group_id))
            if row is None or row[0] is None:
                return None
            size, claim, claim_until = row
            if c.execute(Q_CHORD_COUNT, (group_id,)).fetchone()[0] < size:
                return None
            now = time.time()
            if claim is not None and (claim_until or 0) > now:
                return None
            c.execute(Q_CHORD_CLAIM, (token, now + CHORD_CLAIM_SECONDS, group_id))
            return [bytes(r[0]) for r in c.execute(Q_CHORD_PARTS, (group_id,))]

        payloads = self.db.write(tx)
        if payloads is None:
            return None
        return ChordReady(token, [self.decode_chord_part(p) for p in payloads])

    def chord_cleanup(self, group_id: str, token: str) -> None:
        def tx(c: Any) -> None:
            if c.execute(Q_CHORD_DONE, (time.time() + CHORD_DONE_SECONDS, group_id, token)).rowcount:
                c.execute(Q_CHORD_DROP_PARTS, (group_id,))

        self.db.write(tx)
