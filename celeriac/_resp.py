"""A small Redis client of our own: commands packed in RESP here, replies parsed by
hiredis (the Redis project's C parser), plain sockets.

Why not redis-py: ``import redis`` (8.x) loads its asyncio client, cluster client,
observability (``importlib.metadata``) and ``ssl`` — about 20 MiB in every process of a
prefork worker, which needs none of it.  redis-py is still what opens TLS and Sentinel
connections (``_redis_url.py`` passes an *opener* here, imported only for those URLs):
we take the socket it connected and authenticated, and speak RESP on it ourselves.

Errors (redis-py's are mapped to these at the one place it is used, ``_redis_url``)::

    OperationalError (celeriac.exceptions)
    └── RedisError
        ├── ConnectionError          connect, write or read failed; the socket is closed
        │   ├── TimeoutError         no reply within the socket timeout
        │   └── AuthenticationError  AUTH refused
        └── ResponseError            an error reply ("-ERR ...", "-WRONGTYPE ...")
            └── NoScriptError        EVALSHA of a script the server does not hold

Nothing is retried here: a command whose connection broke may have run (the caller
decides).  A pooled connection that went stale while idle (EOF or junk readable, i.e. a
server restart) is replaced when it is handed out, before anything is written on it.
A forked child never uses its parent's sockets: the pool starts empty in the child.
"""

from __future__ import annotations

import builtins
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import hiredis

from ._fastid import getpid
from .exceptions import OperationalError


class RedisError(OperationalError):
    """Anything that went wrong talking to Redis."""


class ConnectionError(RedisError):  # noqa: A001 - the usual name, module-local
    """The connection failed or broke; it has been closed."""


class TimeoutError(ConnectionError):  # noqa: A001
    """No reply (or no connection) within the socket timeout."""


class AuthenticationError(ConnectionError):
    """AUTH was refused."""


class ResponseError(RedisError):
    """An error reply; the connection stays usable."""


class NoScriptError(ResponseError):
    """EVALSHA named a script the server does not hold (nothing ran)."""


def reply_error(message: str) -> ResponseError:
    """hiredis's factory for error replies (returned as values, raised by the callers)."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


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
    append = out.append
    for a in args:
        cls = a.__class__
        b = a.encode("utf-8") if cls is str else a if cls is bytes else _arg(a)
        append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def pack_pieces(*args: str) -> list[bytes]:
    """``pack(*args)`` as pieces for the caller's ``b"".join``: a command with many long
    arguments (a bulk LPUSH) is then copied once, into the buffer that is sent.  (Every
    buffer over 128 KiB is fresh memory from the system, its pages faulted in as it is
    written: a megabyte costs about a millisecond, so copies of a large command count.)"""
    out = [b"*%d" % len(args)]
    append = out.append
    for a in args:
        b = a.encode("utf-8")
        append(b"\r\n$%d\r\n" % len(b))
        append(b)
    append(b"\r\n")
    return out


MULTI = pack("MULTI")
EXEC = pack("EXEC")


def new_reader() -> Any:
    return hiredis.Reader(replyError=reply_error, notEnoughData=False)


@dataclass
class Params:
    """Where and how to connect.  ``opener`` (TLS, Sentinel) returns a connected and
    authenticated ``(socket, owner)``; ``owner`` is closed with the socket."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    socket_timeout: float | None = 30.0
    socket_connect_timeout: float | None = 5.0
    socket_keepalive: bool = False
    max_connections: int | None = None
    health_check_interval: float = 0.0
    opener: Callable[[], tuple[Any, Any]] | None = None
    address: str = ""

    def __post_init__(self) -> None:
        if not self.address:
            self.address = f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"

    def open_socket(self) -> socket.socket:
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.socket_connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.socket_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self.socket_timeout)
        return sock

    def handshake(self) -> list[bytes]:
        """AUTH and SELECT, sent as one write (none when neither is needed)."""
        out = []
        if self.password is not None or self.username:
            out.append(pack("AUTH", self.username, self.password or "") if self.username
                       else pack("AUTH", self.password))
        if self.db:
            out.append(pack("SELECT", self.db))
        return out


class Connection:
    """One socket and its reader; used by one thread at a time (the pool, a lane, a pub/sub)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.sock: Any = None
        self.owner: Any = None
        self.reader: Any = None
        self.poller: Any = None
        self.pid = 0
        self.last_used = 0.0
        self.buf = bytearray(16384)

    def connect(self) -> None:
        p = self.params
        self.disconnect()
        try:
            if p.opener is not None:
                self.sock, self.owner = p.opener()
            else:
                self.sock = p.open_socket()
        except RedisError:
            raise
        except builtins.TimeoutError as exc:
            raise TimeoutError(f"Timeout connecting to {p.address}") from exc
        except OSError as exc:
            raise ConnectionError(f"Error connecting to {p.address}: {exc}") from exc
        self.pid = getpid()
        self.reader = new_reader()
        self.poller = None
        if hasattr(select, "poll") and not hasattr(self.sock, "pending"):  # TLS may buffer: pending()
            self.poller = select.poll()
            self.poller.register(self.sock, select.POLLIN | select.POLLPRI)
        hello = p.handshake() if p.opener is None else []
        if hello:
            for reply in self.call(b"".join(hello), len(hello)):
                if isinstance(reply, ResponseError):
                    self.disconnect()
                    cls = AuthenticationError if "AUTH" in str(reply) or "WRONGPASS" in str(reply) \
                        or "NOPERM" in str(reply) else ConnectionError
                    raise cls(f"Redis at {p.address} refused the connection: {reply}")
        self.last_used = time.monotonic()

    def disconnect(self) -> None:
        sock, owner = self.sock, self.owner
        self.sock = self.owner = self.reader = self.poller = None
        if owner is not None:
            try:
                if self.pid == getpid():
                    owner.disconnect()
            except Exception:
                pass
        elif sock is not None:
            if self.pid == getpid():   # never shut down a socket a parent process still uses
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                sock.close()
            except OSError:
                pass

    def readable(self, timeout: float) -> bool:
        """Whether data (or EOF) is waiting, within ``timeout`` seconds."""
        sock, poller = self.sock, self.poller
        if sock is None:   # closed, e.g. by another thread stopping a reader
            raise ConnectionError(f"The connection to {self.params.address} is closed")
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True
        if poller is not None:
            return bool(poller.poll(max(timeout, 0.0) * 1000))
        return bool(select.select([sock], [], [], max(timeout, 0.0))[0])

    def _lost(self, exc: BaseException, doing: str) -> NoReturn:
        """Close the connection (replies may be left unread: never reuse the stream) and
        raise ``exc``, as one of ours when it is a socket error."""
        self.disconnect()
        if isinstance(exc, builtins.TimeoutError):
            raise TimeoutError(f"Timeout {doing} {self.params.address}") from exc
        if isinstance(exc, OSError):
            raise ConnectionError(f"Error {doing} {self.params.address}: {exc}") from exc
        raise exc

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except BaseException as exc:
            self._lost(exc, "writing to")

    def read(self, count: int, timeout: float | None = None) -> list[Any]:
        """``count`` replies (error replies as ResponseError values).  ``timeout`` replaces the
        socket timeout for this read (a blocking command)."""
        sock, reader, buf = self.sock, self.reader, self.buf
        out: list[Any] = []
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            while len(out) < count:
                reply = reader.gets()
                if reply is False:
                    n = sock.recv_into(buf)
                    if not n:
                        raise ConnectionError(f"Connection closed by server {self.params.address}")
                    reader.feed(buf, 0, n)
                    continue
                out.append(reply)
            if timeout is not None:
                sock.settimeout(self.params.socket_timeout)
        except BaseException as exc:
            self._lost(exc, "reading from")
        self.last_used = time.monotonic()
        if read_only(out):
            self.disconnect()
        return out

    def call(self, packed: bytes, count: int, block: float | None = None) -> list[Any]:
        """Write ``packed`` and read ``count`` replies.  ``block``: the longest a blocking
        command in it may wait on the server, added to the socket timeout for this read."""
        if self.sock is None:
            self.connect()
        self.send(packed)
        timeout = None
        if block is not None and self.params.socket_timeout is not None:
            timeout = self.params.socket_timeout + block
        return self.read(count, timeout)

    def ensure(self) -> None:
        """Connected, and not stale: an idle socket with something readable (EOF after a
        server restart, a reply left unread) is replaced; with ``health_check_interval``,
        a connection idle that long answers a PING first."""
        if self.pid != getpid():   # the parent's socket: leave it alone
            self.sock = self.owner = self.reader = self.poller = None
        if self.sock is None:
            self.connect()
            return
        try:
            stale = self.readable(0)
        except (OSError, ValueError, ConnectionError):
            stale = True
        if not stale and self.params.health_check_interval \
                and time.monotonic() - self.last_used > self.params.health_check_interval:
            try:
                stale = self.call(pack("PING"), 1)[0] != b"PONG"
            except ConnectionError:
                stale = True
        if stale:
            self.connect()


def read_only(replies: Sequence[Any]) -> bool:
    """Whether a reply says the server is a replica now (a Sentinel failover demoted it):
    the connection is then closed, and the next one goes to the master found anew."""
    return any(isinstance(r, ResponseError) and "READONLY" in str(r) for r in replies)


def raise_errors(replies: Sequence[Any]) -> None:
    for r in replies:
        if isinstance(r, ResponseError):
            raise r


def _sha1_hex(data: bytes) -> str:
    """SHA-1 as Redis names scripts.  CPython's own ``_sha1`` when there is one: ``hashlib``
    loads OpenSSL's libcrypto, about 3.5 MiB in every worker process, for nothing else."""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found]
    except ImportError:
        from hashlib import sha1
    return sha1(data).hexdigest()  # type: ignore[no-any-return]


class Script:
    """A Lua script run with EVALSHA (SCRIPT LOAD and again on NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = _sha1_hex(source.encode("utf-8"))


class Client:
    """A pool of connections, safe to share between threads (each command or pipeline
    takes one connection for its duration) and across fork (a child starts empty)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.where = params.address
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._count = 0
        self._pid = getpid()

    def new_connection(self) -> Connection:
        """A connection of the caller's own, outside the pool (not yet connected)."""
        return Connection(self.params)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        if self._pid != getpid():
            self._lock = threading.Lock()   # the parent's may have been held at fork time
            self._idle, self._count, self._pid = [], 0, getpid()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                limit = self.params.max_connections
                if limit and self._count >= limit:
                    raise ConnectionError(f"Too many connections to {self.where} (max_connections={limit})")
                self._count += 1
        try:
            if conn is None:
                conn = Connection(self.params)
            conn.ensure()
        except BaseException:
            with self._lock:
                self._count -= 1
            raise
        try:
            yield conn
        finally:
            if conn.pid == self._pid == getpid():
                with self._lock:
                    self._idle.append(conn)

    def execute(self, *args: Any, block: float | None = None) -> Any:
        """One command's reply; an error reply raises ResponseError."""
        with self.connection() as conn:
            reply = conn.call(pack(*args), 1, block)[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def pipeline(self, cmds: Sequence[Sequence[Any]], transaction: bool = False) -> list[Any]:
        """Several commands in one write; their replies (MULTI ... EXEC with ``transaction``).
        Every reply is read, then the first error reply raises."""
        if not cmds:
            return []
        packed = b"".join(pack(*c) for c in cmds)
        with self.connection() as conn:
            if not transaction:
                replies = conn.call(packed, len(cmds))
            else:
                replies = conn.call(MULTI + packed + EXEC, len(cmds) + 2)
        if transaction:
            raise_errors(replies)
            replies = replies[-1]
            if replies is None:
                raise ResponseError("transaction aborted (EXEC returned nil)")
        raise_errors(replies)
        return list(replies)

    def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:   # nothing ran: load it and run it
            self.script_load(script)
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def evalsha_many(self, script: Script, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Several calls in one round trip (a NOSCRIPT fails them all, so redoing them is safe)."""
        cmds = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        try:
            return self.pipeline(cmds)
        except NoScriptError:
            self.script_load(script)
            return self.pipeline(cmds)

    def script_load(self, script: Script) -> None:
        self.execute("SCRIPT", "LOAD", script.source)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        if self._pid == getpid():
            for conn in idle:
                conn.disconnect()


class PubSub:
    """A subscribed connection of its own: (P)SUBSCRIBE, (P)UNSUBSCRIBE, and
    ``get_message(timeout)`` returning ``{"type", "pattern", "channel", "data"}`` dicts.
    Sends may come from any thread; one thread reads."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.connection: Connection | None = None
        self.ready: deque[Any] = deque()

    def _send(self, *args: Any) -> None:
        conn = self.connection
        if conn is None:
            conn = Connection(self.client.params)
            conn.connect()
            self.connection = conn
        conn.send(pack(*args))

    def subscribe(self, *channels: Any) -> None:
        self._send("SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: Any) -> None:
        self._send("UNSUBSCRIBE", *channels)

    def psubscribe(self, *patterns: Any) -> None:
        self._send("PSUBSCRIBE", *patterns)

    def punsubscribe(self, *patterns: Any) -> None:
        self._send("PUNSUBSCRIBE", *patterns)

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message or (un)subscribe confirmation, waiting up to ``timeout`` seconds."""
        if not self.ready:
            conn = self.connection
            if conn is None:
                return None
            self._fill(conn, timeout)
            if not self.ready:
                return None
        reply = self.ready.popleft()
        if not isinstance(reply, list) or len(reply) < 3:
            return {"type": "other", "pattern": None, "channel": None, "data": reply}
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "pmessage" and len(reply) >= 4:
            return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
        return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}

    def get_replies(self, timeout: float = 0.0, limit: int = 1000) -> list[Any]:
        """Up to ``limit`` replies as Redis sent them (``[b"message", channel, data]``,
        ``[b"subscribe", channel, count]``...): those that have come, waiting up to
        ``timeout`` seconds for the first.  No dict per message: for a busy listener."""
        out: list[Any] = []
        ready = self.ready
        while len(out) < limit:
            if not ready:
                conn = self.connection
                if conn is None:
                    break
                self._fill(conn, 0.0 if out else timeout)
                if not ready:
                    break
            while ready and len(out) < limit:
                out.append(ready.popleft())
        return out

    def _fill(self, conn: Connection, timeout: float) -> None:
        reader, sock, buf = conn.reader, conn.sock, conn.buf
        if sock is None:
            raise ConnectionError(f"The pub/sub connection to {self.client.where} is closed")
        try:
            while True:
                reply = reader.gets()
                if reply is not False:
                    self.ready.append(reply)
                    continue
                if self.ready or not conn.readable(timeout):
                    return
                n = sock.recv_into(buf)
                if not n:
                    raise ConnectionError(f"Connection closed by server {self.client.where}")
                reader.feed(buf, 0, n)
                timeout = 0.0
        except (OSError, ValueError) as exc:   # ValueError: poll on a socket closed by another thread
            conn.disconnect()
            raise ConnectionError(f"Error reading the pub/sub connection to {self.client.where}: {exc}") from exc
        except ConnectionError:
            conn.disconnect()
            raise

    def close(self) -> None:
        conn, self.connection = self.connection, None
        self.ready.clear()
        if conn is not None:
            conn.disconnect()   # a subscribed connection is never reused
