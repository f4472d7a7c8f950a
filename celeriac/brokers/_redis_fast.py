"""The hot path to Redis: one connection held outside the client's pool, commands
packed once, replies read with a hiredis reader of the lane's own.

A generic client path costs tens of µs of Python per call (pool checkout, argument
packing, one parser call per reply) — as much as the round trip itself on a local
server.  A single ``delay()`` and a worker's fetch are one round trip each, so that
overhead was most of their cost.  ``FastLane.call`` sends pre-packed commands and
reads their replies; nothing about the semantics changes: the same connection
(``_resp.Connection``: TLS, unix sockets, AUTH/SELECT on connect, Sentinel-managed
masters), the same socket timeouts, and any error disconnects the connection so that
half-read replies can never be taken for the next call's.

One connection per broker object and process, used under a lock; a caller that
finds it busy (another thread) gets ``None`` and uses the pool as before.

Publishes are pipelined (``FastLane.send``): the command is written to the socket
and its reply is read later, in bulk — before any other command on the lane, when
``WINDOW`` commands are unread, at ``close()`` and at interpreter exit.  A written
command is in the kernel's buffer towards Redis (delivered even if this process is
killed next); what is not known yet is Redis's verdict.  So each unconfirmed command
is kept until its reply is read: a connection that breaks first gets every one of
them sent again on a fresh connection (as a synchronous publish retried by its
retry policy would; Redis may have run some already, so a message can at worst be
queued twice, never lost), and an error reply raises ``PublishFailed`` naming the
task ids, from the lane's next use (and is logged at exit).  A loopback round trip
costs 60-120 µs of waiting here, the write alone under 10 µs.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import threading
import uuid
import weakref
from collections import deque
from typing import Any

from .._fastid import getpid
from .._resp import Client, ConnectionError, ResponseError, TimeoutError, read_only

_FORK_LOCK = threading.Lock()
WINDOW = 64                 # unconfirmed commands a lane holds before it reads their replies
WINDOW_BYTES = 1 << 20      # ... or bytes of them
# A send first reads the replies that have come (one poll(2), a recv when there are some): a
# reply left unread when the server closes the connection would be lost with it (a reset
# discards what the socket received), and its command sent again, i.e. run twice.
PEEK_AFTER = 1
logger = logging.getLogger("celeriac.broker")
_LANES: weakref.WeakSet[FastLane] = weakref.WeakSet()


class PublishFailed(ResponseError):
    """Redis refused pipelined publishes (an error reply read after ``delay()`` returned)."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        ids = ", ".join(label for label, _ in failures[:10])
        more = f" and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(f"Redis did not store {len(failures)} published message(s) ({ids}{more}): "
                         f"{failures[0][1]}")


def _refusal(replies: list[Any]) -> BaseException | None:
    """The error in one command's replies (for MULTI ... EXEC, also inside EXEC's array)."""
    for r in replies:
        if isinstance(r, Exception):
            return r
    last = replies[-1]
    if isinstance(last, list):
        for r in last:
            if isinstance(r, Exception):
                return r
    elif last is None and len(replies) > 1:
        return ResponseError("transaction aborted (EXEC returned nil)")
    return None


@atexit.register
def _confirm_all() -> None:
    """At exit, read what every lane still owes (a failure is logged: nobody is left to raise to)."""
    for lane in list(_LANES):
        try:
            lane.confirm()
        except Exception as exc:
            logger.error("Pipelined publishes not confirmed at exit: %s", exc)


class Tags:
    """Delivery tags in a UUID's shape, made by counting from a random base (one per
    process): unique like ``uuid4()`` tags, at a tenth of the cost."""

    def __init__(self) -> None:
        self.pid = 0
        self.base = ""
        self.counter: Any = None

    def __call__(self) -> str:
        if self.pid != getpid():
            h = uuid.uuid4().hex
            self.base = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-"
            self.counter = itertools.count((int(h[20:], 16) & 0xFFFFFFFF) + 1)  # next(): atomic
            self.pid = getpid()
        return f"{self.base}{next(self.counter):012x}"

    def many(self, n: int) -> list[str]:
        """``n`` tags, as ``n`` calls would make them."""
        if n <= 0:
            return []
        first = self()  # (a new base in a forked child)
        base, counter = self.base, self.counter
        return [first, *[f"{base}{next(counter):012x}" for _ in range(n - 1)]]


class FastLane:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.conn: Any = None
        self.pid = 0
        self.sock: Any = None       # the connection's socket the reader below belongs to
        self.reader: Any = None
        self.poller: Any = None
        self.buf: bytearray = bytearray(0)  # the connection's own receive buffer (see _socket)
        # pipelined commands whose replies are unread: (packed, reply count, label)
        # (packed, reply count, label, what to send instead if its fate is unknown, or None)
        self.pending: deque[tuple[bytes, int, str, Any]] = deque()
        self.pending_bytes = 0
        self.partial: list[Any] = []  # replies read so far of the first pending command
        _LANES.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a lock of our own (the parent's may have been held when it
        forked) and no connection (the parent's socket is the parent's)."""
        with _FORK_LOCK:
            if self.pid != getpid():
                self.lock = threading.Lock()
                self.conn = self.sock = self.reader = self.poller = None
                self.pid = 0
                self.pending = deque()  # the parent's to confirm, on the parent's socket
                self.pending_bytes = 0
                self.partial = []

    def _connection(self) -> Any:
        conn = self.conn
        if conn is None or self.pid != getpid():
            # a forked child never touches its parent's socket: it takes its own
            conn = self.conn = self.client.new_connection()
            self.pid = getpid()
            conn.connect()
            return conn
        if conn.sock is None:
            conn.connect()
            return conn
        if self.pending:
            return conn  # replies are owed on this socket: readable is expected, not stale
        if self.sock is conn.sock and self.poller is not None:
            # our own reader holds no partial reply (every call reads to the end), so a
            # readable socket means EOF or junk: one poll(2), cheaper than can_read()
            stale = bool(self.poller.poll(0))
        else:
            try:
                stale = conn.readable(0)
            except (OSError, ValueError):
                stale = True
        if stale:
            # data or EOF waiting on an idle connection: the server went away (restart)
            # or a reply was left unread; start afresh, as the pool does on checkout
            conn.connect()
        return conn

    def call(self, packed: bytes, replies: int) -> list[Any] | None:
        """Send ``packed`` (``replies`` commands) and return the replies; None when the
        lane is busy.  Error replies raise (ResponseError and subclasses)."""
        if self.pid != getpid() and self.pid:
            self._after_fork()
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if self.pending:
                self._confirm()
            conn = self._connection()
            return self._raw(conn, packed, replies)
        finally:
            self.lock.release()

    def _raw(self, conn: Any, packed: bytes, replies: int) -> list[Any]:
        """Write and read on the connection itself (one recv for all the replies, usually);
        a failure closes it (replies may be left unread: the stream is never reused)."""
        self._socket(conn)
        try:
            conn.send(packed)
            out: list[Any] = conn.read(replies)
        except BaseException:
            self.sock = None
            raise
        for reply in out:
            if isinstance(reply, ResponseError):
                if conn.sock is None:  # a demoted master's: read() closed it, the next finds the new one
                    self.sock = None
                raise reply     # every reply was read: the connection stays usable
        return out

    # -- pipelined publishes --------------------------------------------------------
    def send(self, packed: bytes, replies: int, label: str, resend: Any = None) -> bool:
        """Write ``packed`` (``replies`` commands) and return without waiting for the replies;
        False when the lane is busy (the caller then sends synchronously).  ``label`` names the command in errors (a task id).  The replies that have
        arrived are read first (no waiting), so a refusal is raised by the next send.
        ``resend``: a function returning a one-reply command to send instead when the
        connection breaks before the reply is read (an idempotent form of ``packed``)."""
        if self.pid != getpid() and self.pid:
            self._after_fork()
        if not self.lock.acquire(blocking=False):
            return False
        try:
            conn = self._connection()
            if self.pending:
                if conn.sock is not self.sock:
                    self._resend(conn)  # the owed replies were on a socket that is gone
                elif len(self.pending) >= PEEK_AFTER and self.poller is not None and self.poller.poll(0):
                    self._settle_owed(conn, block=False)
                    if not self.pending and self.poller.poll(0):  # EOF behind the last reply
                        conn.connect()
            sock = self._socket(conn)
            self.pending.append((packed, replies, label, resend))
            self.pending_bytes += len(packed)
            try:
                sock.sendall(packed)
            except OSError:
                self._resend(conn)  # everything unconfirmed, this one included, on a new connection
                return True
            if len(self.pending) >= WINDOW or self.pending_bytes >= WINDOW_BYTES:
                self._settle_owed(conn, block=True)
            return True
        finally:
            self.lock.release()

    def confirm(self) -> None:
        """Wait for the replies of every pipelined command (raises ``PublishFailed``)."""
        if self.pid != getpid() or not self.pending:
            return
        if not self.lock.acquire(timeout=5):
            raise TimeoutError("the connection is busy: publishes left unconfirmed")
        try:
            if self.pending:
                self._confirm()
        finally:
            self.lock.release()

    def _socket(self, conn: Any) -> Any:
        sock = conn.sock
        if sock is not self.sock:  # a new connection: its own fresh reader (nothing half-read)
            self.sock = sock
            self.buf, self.reader, self.poller = conn.buf, conn.reader, conn.poller
            self.partial = []
        return sock

    def _confirm(self) -> None:
        """Under the lock: read every owed reply."""
        conn = self.conn
        if conn is None or conn.sock is None or conn.sock is not self.sock:
            self._resend(conn)
        else:
            self._settle_owed(conn, block=True)

    def _settle_owed(self, conn: Any, block: bool) -> None:
        """Read owed replies (all of them, or with ``block=False`` those that have arrived),
        confirming commands one by one; a broken connection sends the rest again."""
        failures: list[tuple[str, BaseException]] = []
        try:
            self._consume(self.sock, block, failures)
        except (OSError, ConnectionError):
            self._resend(conn, failures)
            return
        if failures:
            if not self.pending and read_only([exc for _, exc in failures]):
                self._drop(conn)    # a demoted master: the next connection finds the new one
            raise PublishFailed(failures)

    def _consume(self, sock: Any, block: bool, failures: list[tuple[str, BaseException]]) -> None:
        """Read replies and pop the commands they complete (refusals into ``failures``)."""
        reader, buf, pending = self.reader, self.buf, self.pending
        while pending:
            reply = reader.gets()
            if reply is False:
                if not block and not self.poller.poll(0):
                    break
                n = sock.recv_into(buf)
                if not n:
                    raise OSError("Connection closed by server.")
                reader.feed(buf, 0, n)
                continue
            self.partial.append(reply)
            packed, count, label, _ = pending[0]
            if len(self.partial) == count:
                bad = _refusal(self.partial)
                if bad is not None:
                    failures.append((label, bad))
                pending.popleft()
                self.pending_bytes -= len(packed)
                self.partial = []

    def _drop(self, conn: Any) -> None:
        """Forget the unconfirmed commands and the connection they were written on."""
        self.pending.clear()
        self.pending_bytes = 0
        self.partial = []
        self.sock = None
        if conn is not None:
            conn.disconnect()

    def _resend(self, conn: Any, failures: list[tuple[str, BaseException]] | None = None) -> None:
        """The connection broke with replies owed: the replies already received on it still
        confirm their commands; every other one is sent again on a new connection, and their
        replies awaited (raises if that fails too).  A command whose replies were partly read
        may have run: it is sent again (at least once)."""
        failures = [] if failures is None else failures
        if self.sock is not None and self.poller is not None and self.pending:
            # what arrived before it broke confirms its commands; the read then fails, as expected
            with contextlib.suppress(OSError, ConnectionError):
                self._consume(self.sock, False, failures)
        # fate unknown: sent, no reply read; the idempotent form where there is one
        items = [(r(), 1, label, None) if r is not None else (p, n, label, None)
                 for p, n, label, r in self.pending]
        self._drop(conn)
        try:
            conn = self.conn = self.client.new_connection() if conn is None else conn
            if conn.sock is None:
                conn.connect()
            sock = self._socket(conn)
            self.pending.extend(items)
            self.pending_bytes = sum(len(p) for p, _, _, _ in items)
            if items:
                sock.sendall(b"".join(p for p, _, _, _ in items))
                self._consume(sock, True, failures)
        except BaseException as exc:
            self._drop(conn)
            labels = ", ".join(label for _, _, label, _ in items[:10])
            raise ConnectionError(
                f"Lost the connection to Redis with {len(items)} published message(s) unconfirmed "
                f"({labels}), and could not send them again: {exc}") from exc
        if items:
            logger.warning("Connection to Redis lost with %d published message(s) unconfirmed: sent again",
                           len(items))
        if failures:
            raise PublishFailed(failures)

    def close(self) -> None:
        try:
            self.confirm()
        except Exception as exc:
            logger.error("Pipelined publishes not confirmed at close: %s", exc)
        with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None and self.pid == getpid():
                conn.disconnect()
