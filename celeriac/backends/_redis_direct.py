"""A lone synchronous waiter's own connection: SUBSCRIBE and GET in one write, and the
published result read by the waiting thread itself.

The listener (``_Listener`` in ``redis.py``) serves any number of waiters, but costs a
lone ``AsyncResult.get()`` two round trips before it may sleep (SUBSCRIBE, confirmed,
then GET: a GET sent earlier could miss a result stored before the subscription took
effect) and one thread wake-up more when the result comes (the listener thread reads
the message, then wakes the waiter).

Here one connection speaks RESP3 (``HELLO 3``), where a subscribed connection may still
run GET and published messages come as push frames between the replies.  Redis runs a
connection's commands in order, so after ``SUBSCRIBE k`` + ``GET k`` sent in one write,
a result stored before the subscription took effect is in the GET's reply, and one
stored after it comes as a message: nothing is missed, and the waiter sleeps in
``poll(2)`` on this socket, woken by the PUBLISH itself.

One waiter at a time: ``DirectWait.wait`` returns ``None`` when the connection is busy
(another thread waits on it), when the server does not speak RESP3, or when the
connection is lost; the caller then waits through the listener as before (which
subscribes and reads the key again, so nothing is lost by switching; and its reconnect
and error rules apply).  Like the listener, the key is read again every
``RECHECK_SECONDS`` as a safety net.

Replies are told apart by shape: a push is a list (``[b"message", channel, data]``,
``[b"subscribe", channel, n]``, ...); a GET's reply is bytes, ``None`` or an error.
A wait's channel is unsubscribed lazily, in the next wait's write (``UNSUBSCRIBE old``,
``SUBSCRIBE new``, ``GET new``): no syscall between the result and its caller.  What
comes meanwhile on the old channel, the confirmations, and GET replies still unread when
a wait ended (``owed``) are read with the next wait's replies and skipped (a push for
another channel; GET replies by count).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import states
from .._fastid import getpid
from .._resp import Connection, Params, RedisError, ResponseError, pack
from ..exceptions import OperationalError, TimeoutError

RECHECK_SECONDS = 5.0       # the key is read again at least this often while waiting
ANSWER_GRACE = 1.0          # past the deadline, how long the first GET's reply is still waited for
RECONNECT_SECONDS = 10.0    # a connection lost mid-wait is tried again this long
_LOST = (OSError, ValueError, RedisError)   # ValueError: poll(2) on a socket closed by close()


class _Fallback(Exception):
    """Wait through the listener instead."""


class DirectWait:
    """One RESP3 connection of a backend in one process, used by one waiting thread at a time."""

    def __init__(self, params: Params, where: str = "") -> None:
        self.params = params
        self.where = where or params.address
        self.lock = threading.Lock()
        self.pid = getpid()
        self.conn: Connection | None = None
        self.owed = 0               # GET replies still unread on the connection (pushes aside)
        self.stale: bytes | None = None   # the last wait's channel, still subscribed
        self.unsupported = False    # the server refused HELLO 3
        self.closed = False
        self.progress = False       # a reply came on this attempt's connection
        self.waited = False         # this wait had a connection once

    def wait(self, key: bytes, decode: Callable[[bytes], dict[str, Any]],
             deadline: float | None) -> dict[str, Any] | None:
        """The meta stored at ``key`` once it is in a ready state; ``None``: wait through
        the listener instead.  ``TimeoutError`` at ``deadline`` (``time.monotonic()``);
        ``OperationalError`` when a connection lost mid-wait cannot be made again within
        ``RECONNECT_SECONDS``."""
        if self.unsupported or self.closed or not self.lock.acquire(blocking=False):
            return None
        try:
            lost_at: float | None = None      # since when no reply came on any connection
            backoff = 0.0
            while not self.closed:
                self.progress = False
                try:
                    return self._wait(key, decode, deadline)
                except _Fallback:
                    self._drop()      # e.g. after an error reply: never trust the stream's count again
                    return None
                except _LOST as exc:
                    self._drop()
                    now = time.monotonic()
                    if self.progress or lost_at is None:
                        if not self.progress and lost_at is None and not self.waited:
                            return None       # unreachable from the start: the listener's rules
                        lost_at, backoff = now, 0.0
                    elif now - lost_at > RECONNECT_SECONDS:
                        raise OperationalError(f"Redis result backend at {self.where}: connection lost "
                                               f"while waiting, and not made again within "
                                               f"{RECONNECT_SECONDS:g}s: {exc}") from exc
                    if deadline is not None and now >= deadline:
                        raise TimeoutError(f"The operation timed out waiting for {key.decode()}.") from exc
                    if backoff:
                        time.sleep(backoff if deadline is None else min(backoff, deadline - now))
                    backoff = min(max(backoff * 2, 0.05), 2.0)
            return None
        finally:
            self.waited = False
            if self.closed:   # closed while this wait made its connection: nobody else closes it
                self._drop()
            self.lock.release()

    def close(self) -> None:
        """From any thread.  A waiter reading the connection sees it end and falls back."""
        self.closed = True
        conn = self.conn
        if self.lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self.lock.release()
        elif conn is not None and conn.pid == getpid():
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)   # the waiter closes it when it sees the end
                except OSError:
                    pass

    # -- with the lock held -------------------------------------------------------------
    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        self.owed = 0
        self.stale = None
        if conn is not None:
            conn.disconnect()

    def _connect(self) -> Connection:
        conn = Connection(self.params)
        conn.connect()
        reply = conn.call(pack("HELLO", 3), 1)[0]
        if isinstance(reply, ResponseError):    # before Redis 6: no RESP3
            conn.disconnect()
            self.unsupported = True
            raise _Fallback
        self.conn, self.owed = conn, 0
        return conn

    def _start(self, request: bytes) -> Connection:
        """``request`` sent on a live connection (a new one when the old one is gone)."""
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.send(request)
                return conn
            except _LOST:   # e.g. closed by a server restart while idle
                self._drop()
        conn = self._connect()
        conn.send(request)
        return conn

    def _wait(self, key: bytes, decode: Callable[[bytes], dict[str, Any]],
              deadline: float | None) -> dict[str, Any]:
        get = pack("GET", key)
        stale, self.stale = self.stale, None
        request = pack("SUBSCRIBE", key) + get
        conn = self._start(request if stale is None else pack("UNSUBSCRIBE", stale) + request)
        skip = self.owed            # earlier waits' GET replies come first
        self.owed += 1
        self.waited = True
        reader, sock, buf = conn.reader, conn.sock, conn.buf
        last_read = time.monotonic()
        answered = False            # our first GET's reply was read
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    now = time.monotonic()
                    # the key is read once whatever the timeout (get(timeout=0) of a finished task)
                    end = None if deadline is None else deadline if answered else deadline + ANSWER_GRACE
                    if end is not None and now >= end:
                        raise TimeoutError(f"The operation timed out waiting for {key.decode()}.")
                    step = RECHECK_SECONDS - (now - last_read)
                    if step <= 0:
                        conn.send(get)
                        self.owed += 1
                        last_read = now
                        continue
                    if conn.readable(step if end is None else min(step, end - now)):
                        n = sock.recv_into(buf)
                        if not n:
                            raise ConnectionError("connection closed")
                        reader.feed(buf, 0, n)
                    continue
                self.progress = True
                if isinstance(reply, list):     # a push: a message, an (un)subscribe confirmation
                    if len(reply) == 3 and reply[0] == b"message" and reply[1] == key:
                        try:
                            meta = decode(reply[2])
                        except Exception:       # e.g. a payload we may not decode: read the key
                            conn.send(get)
                            self.owed += 1
                            continue
                        if meta.get("status") in states.READY_STATES:
                            return meta
                    continue
                self.owed -= 1                  # a GET's reply
                if skip:
                    skip -= 1
                    continue
                answered = True
                if isinstance(reply, bytes):
                    meta = decode(reply)        # undecodable: the listener's path raises it
                    if meta.get("status") in states.READY_STATES:
                        return meta
                elif reply is not None:         # an error reply: the listener's path reports it
                    raise _Fallback
        except (_Fallback, TimeoutError, *_LOST):
            raise
        except Exception:
            raise _Fallback from None
        finally:
            if self.conn is conn and conn.sock is not None:
                self.stale = key            # unsubscribed with the next wait's write
