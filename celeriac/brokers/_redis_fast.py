"""The hot path to Redis: one connection held outside redis-py's pool, commands
packed here, replies read with the connection's own (hiredis) parser.

redis-py's generic path costs 40-90 µs of Python per call (pool checkout with
observability counters, argument packing, a pipeline object, retry wrappers, one
parser call per reply) — as much as the round trip itself on a local server.  A
single ``delay()`` and a worker's fetch are one round trip each, so that overhead
was most of their cost.  ``FastLane.call`` sends pre-packed commands and reads
their replies; nothing about the semantics changes: the same connection class
(TLS, unix sockets, AUTH/SELECT on connect, Sentinel-managed masters), the same
socket timeouts, and any error disconnects the connection so that half-read
replies can never be taken for the next call's.

One connection per broker object and process, used under a lock; a caller that
finds it busy (another thread) gets ``None`` and uses the pool as before.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import uuid
from typing import Any

import redis

from .._fastid import getpid

hiredis: Any
try:
    import hiredis
    from redis._parsers import BaseParser
    _parse_error: Any = BaseParser.parse_error   # "NOSCRIPT ..." -> NoScriptError, as redis-py does
except ImportError:  # no hiredis: replies are read through the connection's own parser
    hiredis = None


def _arg(a: Any) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode("utf-8")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return repr(a).encode()
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    raise TypeError(f"cannot send {type(a).__name__} to Redis")


def pack(*args: Any) -> bytes:
    """One command in RESP: ``*N`` then ``$len`` + bytes per argument."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


_FORK_LOCK = threading.Lock()
MULTI = pack("MULTI")
EXEC = pack("EXEC")


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


class FastLane:
    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.lock = threading.Lock()
        self.conn: Any = None
        self.pid = 0
        self.sock: Any = None       # the connection's socket the reader below belongs to
        self.reader: Any = None
        self.poller: Any = None
        self.buf = bytearray(65536)

    def _after_fork(self) -> None:
        """In a forked child: a lock of our own (the parent's may have been held when it
        forked) and no connection (the parent's socket is the parent's)."""
        with _FORK_LOCK:
            if self.pid != getpid():
                self.lock = threading.Lock()
                self.conn = self.sock = self.reader = self.poller = None
                self.pid = 0

    def _connection(self) -> Any:
        conn = self.conn
        if conn is None or self.pid != getpid():
            # a forked child never touches its parent's socket: it takes its own
            conn = self.conn = self.pool.get_connection()
            self.pid = getpid()
            return conn
        if conn._sock is None:
            conn.connect()
            return conn
        if self.sock is conn._sock and self.poller is not None:
            # our own reader holds no partial reply (every call reads to the end), so a
            # readable socket means EOF or junk: one poll(2), cheaper than can_read()
            stale = bool(self.poller.poll(0))
        else:
            try:
                stale = conn.can_read()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                stale = True
        if stale:
            # data or EOF waiting on an idle connection: the server went away (restart)
            # or a reply was left unread; start afresh, as the pool does on checkout
            conn.disconnect()
            conn.connect()
        return conn

    def call(self, packed: bytes, replies: int) -> list[Any] | None:
        """Send ``packed`` (``replies`` commands) and return the replies; None when the
        lane is busy.  Error replies raise (redis.ResponseError and subclasses)."""
        if self.pid != getpid() and self.pid:
            self._after_fork()
        if not self.lock.acquire(blocking=False):
            return None
        try:
            conn = self._connection()
            if hiredis is not None:
                return self._raw(conn, packed, replies)
            try:
                conn.send_packed_command([packed])
                out = []
                first_error: BaseException | None = None
                for _ in range(replies):
                    try:
                        out.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        # keep reading: the other replies are on the wire already
                        first_error = first_error or exc
                        out.append(exc)
            except BaseException:
                conn.disconnect()   # replies may be left unread: never reuse the stream
                raise
            if first_error is not None:
                raise first_error   # every reply was read: the connection stays usable
            return out
        finally:
            self.lock.release()

    def _raw(self, conn: Any, packed: bytes, replies: int) -> list[Any]:
        """Write and read the socket directly: one recv for all the replies, usually."""
        sock = conn._sock
        if sock is not self.sock:  # a new connection: a new reader (nothing half-read)
            self.sock = sock
            self.reader = hiredis.Reader(replyError=_parse_error, notEnoughData=False)
            self.poller = None
            if hasattr(select, "poll") and not hasattr(sock, "pending"):  # TLS may buffer: can_read()
                self.poller = select.poll()
                self.poller.register(sock, select.POLLIN | select.POLLPRI)
        reader, buf = self.reader, self.buf
        out: list[Any] = []
        try:
            sock.sendall(packed)
            while True:
                reply = reader.gets()
                if reply is False:
                    n = sock.recv_into(buf)
                    if not n:
                        raise redis.exceptions.ConnectionError("Connection closed by server.")
                    reader.feed(buf, 0, n)
                    continue
                out.append(reply)
                if len(out) == replies:
                    break
        except BaseException as exc:
            self.sock = None
            conn.disconnect()   # replies may be left unread: never reuse the stream
            if isinstance(exc, socket.timeout):
                raise redis.exceptions.TimeoutError(f"Timeout reading from {conn._host_error()}") from exc
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(
                    f"Error while reading from {conn._host_error()}: {exc.args}") from exc
            raise
        for reply in out:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply     # every reply was read: the connection stays usable
        return out

    def close(self) -> None:
        with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None and self.pid == getpid():
                try:
                    self.pool.release(conn)
                except Exception:
                    pass
