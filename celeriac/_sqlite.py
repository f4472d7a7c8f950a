"""One SQLite file shared by processes: connections, pragmas and write transactions.

Used by the SQLite broker and the SQLite result backend.  Every write runs in
``BEGIN IMMEDIATE`` and is retried with short sleeps while another process holds
the write lock (SQLite's own busy handler sleeps in whole milliseconds, which
costs throughput under contention).
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .exceptions import ImproperlyConfigured, OperationalError

T = TypeVar("T")
DEFAULT_URL = "sqlite:///celeriac.db"


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db`` (SQLAlchemy's form)."""
    for prefix in ("sqla+sqlite://", "db+sqlite://", "sqlite://"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            break
    else:
        raise ImproperlyConfigured(f"Not a SQLite URL: {url!r} (expected sqlite:///path.db)")
    if not rest.startswith("/") or rest in ("/", ""):
        raise ImproperlyConfigured(
            f"SQLite URL {url!r} names no file: use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = rest[1:].split("?", 1)[0]
    if path in (":memory:", ""):
        raise ImproperlyConfigured(
            f"SQLite URL {url!r}: an in-memory database cannot be shared by workers; name a file"
        )
    return os.path.abspath(path)


class SQLiteDB:
    """Per-thread, fork-safe connections to one database file."""

    def __init__(self, path: str, schema: str) -> None:
        self.path = path
        self.schema = schema
        self._local = threading.local()
        self._schema_done = False
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            raise OperationalError(f"SQLite database folder does not exist: {directory}")

    def conn(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=0")
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=8000")
            conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.Error as exc:
            raise OperationalError(f"Cannot open SQLite database {self.path}: {exc}") from exc
        # Our writers queue on an flock of a side file: the kernel hands the lock to the next
        # waiter at once, where SQLite's busy retries would sleep.  Foreign writers (the
        # sqlite3 shell) are still handled by the retry loop.
        local.lockfd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        local.conn, local.pid = conn, os.getpid()
        if not self._schema_done:
            self.write(lambda c: c.executescript(self.schema) and None, script=True)
            self._schema_done = True
        return conn

    @staticmethod
    def _retry(fn: Callable[[], T], deadline: float = 30.0) -> T:
        end = time.monotonic() + deadline
        delay = 0.00002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                msg = str(exc)
                if "locked" not in msg and "busy" not in msg:
                    raise
                if time.monotonic() > end:
                    raise OperationalError(f"SQLite database stayed locked for {deadline}s") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.001)

    def write(self, fn: Callable[[sqlite3.Connection], T], script: bool = False) -> T:
        """Run ``fn(conn)`` inside BEGIN IMMEDIATE ... COMMIT, retrying on lock."""
        conn = self.conn() if not script else self._local.conn

        def begin() -> None:
            conn.execute("BEGIN IMMEDIATE")

        lockfd = getattr(self._local, "lockfd", None)
        try:
            if script:
                return self._retry(lambda: fn(conn))
            if lockfd is not None:
                fcntl.flock(lockfd, fcntl.LOCK_EX)
            try:
                self._retry(begin)
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if lockfd is not None:
                    fcntl.flock(lockfd, fcntl.LOCK_UN)
        except sqlite3.Error as exc:
            raise OperationalError(f"SQLite error on {self.path}: {exc}") from exc

    def read(self, sql: str, params: Any = ()) -> list[Any]:
        try:
            return self._retry(lambda: self.conn().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise OperationalError(f"SQLite error on {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
            os.close(self._local.lockfd)
        self._local = threading.local()
