"""The Redis result backend's listener: one pub/sub connection per backend and process,
read by a daemon thread that hands each published result to the waiters of its channel
(``RedisBackend.wait_for_many``, ``prepare_wait``/``_wait`` for ``aget()``, and a
``wait_for`` that finds the direct connection busy).  See ``_Listener``."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from .._redis_url import map_errors
from .._resp import Client, PubSub, RedisError
from ..exceptions import OperationalError

BATCH = 1000                          # channels per SUBSCRIBE / UNSUBSCRIBE
SUBSCRIBE_TIMEOUT = 10.0              # how long a waiter waits for Redis to confirm a SUBSCRIBE
LISTENER_IDLE = 10.0                  # the listener wakes at least this often (lazy UNSUBSCRIBEs)


class _Mailbox:
    """What one waiter receives: (channel, payload) pairs, and how many holds per channel."""

    __slots__ = ("items", "counts")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []
        self.counts: dict[bytes, int] = {}


class _Request:
    """A SUBSCRIBE batch whose confirmations a waiter is waiting for."""

    __slots__ = ("remaining", "event", "followers", "reconnect")

    def __init__(self, remaining: int, reconnect: bool = False) -> None:
        self.remaining = remaining
        self.event = threading.Event()
        self.followers: list[_Request] = []
        self.reconnect = reconnect


class _Listener:
    """One pub/sub connection for one backend in one process, owned by a daemon thread.

    Waiters register a ``_Mailbox`` for their channels; the thread appends each
    published message to the mailboxes of its channel and wakes them.  To subscribe, a
    waiter queues the SUBSCRIBE, wakes the thread with a PUBLISH on the listener's own
    channel, and returns once Redis confirmed every channel — so a GET it sends
    afterwards cannot miss a write.  Channels nobody waits for are unsubscribed lazily.
    After a lost connection the thread reconnects, subscribes every wanted channel
    again, then bumps ``generation``, telling waiters to read their keys again.
    """

    def __init__(self, client: Client, wake_channel: bytes, where: str) -> None:
        self.client = client
        self.wake = wake_channel
        self.where = where
        self.pid = os.getpid()
        self.cond = threading.Condition()
        # Held while (UN)SUBSCRIBEs are sent, with the matching ``inflight`` entries made,
        # and while the connection is replaced: a waiter may send its own SUBSCRIBE (and
        # whatever is queued before it) on the listener's connection instead of waking
        # the thread to do it.  Taken before ``cond``, never the other way round.
        self.send_lock = threading.Lock()
        self.boxes: dict[bytes, set[_Mailbox]] = {}           # channel -> its waiters
        self.outbox: deque[tuple[str, list[bytes], _Request | None]] = deque()
        self.inflight: deque[list[Any]] = deque()             # [request, confirmations left in batch]
        self.orphans: list[_Request] = []                     # requests a reconnect will confirm
        self.generation = 0
        self.error: BaseException | None = None
        self.stopping = False
        self.pubsub: Any = None
        self.thread: threading.Thread | None = None
        self._connected_once = False

    # -- called by waiters ---------------------------------------------------------
    def subscribe(self, box: _Mailbox, channels: Sequence[bytes]) -> None:
        with self.cond:
            new = []
            for ch in channels:
                n = box.counts.get(ch, 0)
                box.counts[ch] = n + 1
                if n == 0:
                    waiters = self.boxes.setdefault(ch, set())
                    waiters.add(box)
                    if len(waiters) == 1:
                        new.append(ch)
            if not new:
                return
            req = _Request(len(new))
            for i in range(0, len(new), BATCH):
                self.outbox.append(("SUBSCRIBE", new[i:i + BATCH], req))
            self._start()
        if not self._send_now():
            try:
                with map_errors(f"Redis result backend at {self.where}"):
                    self.client.execute("PUBLISH", self.wake, b"")
            except OperationalError:  # connection closed under us: a PUBLISH is safe to repeat
                with map_errors(f"Redis result backend at {self.where}"):
                    self.client.execute("PUBLISH", self.wake, b"")
        if not req.event.wait(SUBSCRIBE_TIMEOUT):
            self.unsubscribe(box, channels)
            raise OperationalError(f"Redis result backend at {self.where}: no SUBSCRIBE confirmation "
                                   f"within {SUBSCRIBE_TIMEOUT:g}s ({self.error!r})")

    def _send_now(self) -> bool:
        """Send what is queued (our SUBSCRIBE last) on the listener's connection from this
        thread: one round trip, no wake-up PUBLISH, no hand-off to the thread for sending.
        False when there is no healthy connection yet: the thread will do it."""
        with self.send_lock:
            with self.cond:
                ps = self.pubsub
                ready = (ps is not None and getattr(ps, "connection", None) is not None and self.error is None
                         and not self.stopping and self.thread is not None and self.thread.is_alive())
            if not ready:
                return False
            try:
                self._flush_locked()
            except Exception:
                return False  # the listener's read fails too, and its reconnect confirms ours
            return True

    def unsubscribe(self, box: _Mailbox, channels: Sequence[bytes]) -> None:
        with self.cond:
            gone = []
            for ch in channels:
                n = box.counts.get(ch, 0)
                if n > 1:
                    box.counts[ch] = n - 1
                    continue
                if n == 0:
                    continue
                del box.counts[ch]
                waiters = self.boxes.get(ch)
                if waiters is not None:
                    waiters.discard(box)
                    if not waiters:
                        del self.boxes[ch]
                        gone.append(ch)
            if not box.counts:
                box.items.clear()
            for i in range(0, len(gone), BATCH):
                self.outbox.append(("UNSUBSCRIBE", gone[i:i + BATCH], None))

    def wait(self, box: _Mailbox, timeout: float, generation: int) -> None:
        """Until ``box`` has messages, a reconnect happened, or ``timeout``."""
        end = time.monotonic() + timeout
        with self.cond:
            while not box.items and self.generation == generation and not self.stopping:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)

    def take(self, box: _Mailbox) -> list[tuple[bytes, bytes]]:
        with self.cond:
            items, box.items = box.items, []
            return items

    # -- the thread ----------------------------------------------------------------
    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="celeriac-redis-results", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            thread = self.thread
        if thread is None:
            return
        try:
            self.client.execute("PUBLISH", self.wake, b"")
        except RedisError:
            pass
        thread.join(2.0)
        if thread.is_alive():   # blocked on a dead server: break its read
            ps = self.pubsub
            conn = getattr(ps, "connection", None)
            if conn is not None:
                conn.disconnect()
            thread.join(5.0)

    def _run(self) -> None:
        backoff = 0.05
        while not self.stopping:
            try:
                if self.pubsub is None:
                    self._open()
                    backoff = 0.05
                self._flush()
                batch = self.pubsub.get_replies(timeout=LISTENER_IDLE, limit=1000)
                if batch:
                    self._dispatch(batch)
            except Exception as exc:  # any failure of the connection: start over
                self._lost(exc)
                with self.cond:
                    if not self.stopping:
                        self.cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self._close_pubsub()

    def _open(self) -> None:
        with self.send_lock:
            self._open_locked()

    def _open_locked(self) -> None:
        self.pubsub = PubSub(self.client)
        with self.cond:
            # Subscribe every wanted channel; this covers whatever was queued or
            # unconfirmed, whose waiters are released when it is confirmed.
            channels = [self.wake, *self.boxes]
            req = _Request(len(channels), reconnect=self._connected_once)
            for r in self.orphans + [r for _op, _chs, r in self.outbox if r is not None]:
                req.followers += [r, *r.followers]
            self.orphans = []
            self.outbox.clear()
            for i in range(0, len(channels), BATCH):
                self.outbox.append(("SUBSCRIBE", channels[i:i + BATCH], req))
            self._connected_once = True

    def _flush(self) -> None:
        with self.send_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self.cond:
            items = list(self.outbox)
            self.outbox.clear()
            for op, channels, req in items:
                if op == "SUBSCRIBE":
                    self.inflight.append([req, len(channels)])
        for op, channels, _req in items:
            if op == "SUBSCRIBE":
                self.pubsub.subscribe(*channels)
            else:
                self.pubsub.unsubscribe(*channels)

    def _dispatch(self, batch: list[Any]) -> None:
        """Raw pub/sub replies (PubSub.get_replies): messages to their mailboxes, SUBSCRIBE
        confirmations counted off the requests in flight; anything else is ignored."""
        with self.cond:
            for msg in batch:
                if msg.__class__ is not list or len(msg) != 3:
                    continue
                kind = msg[0]
                if kind == b"message":
                    channel = msg[1]
                    if channel == self.wake:
                        continue
                    for box in self.boxes.get(channel, ()):
                        box.items.append((channel, msg[2]))
                elif kind == b"subscribe" and self.inflight:
                    head = self.inflight[0]
                    head[1] -= 1
                    req: _Request = head[0]
                    req.remaining -= 1
                    if head[1] <= 0:
                        self.inflight.popleft()
                    if req.remaining <= 0:
                        self._complete(req)
            self.cond.notify_all()

    def _complete(self, req: _Request) -> None:
        if req.reconnect:
            self.generation += 1
        self.error = None
        req.event.set()
        for other in req.followers:
            other.event.set()

    def _lost(self, exc: BaseException) -> None:
        with self.send_lock:
            self._lost_locked(exc)

    def _lost_locked(self, exc: BaseException) -> None:
        self._close_pubsub()
        with self.cond:
            self.error = exc
            self.orphans += [item[0] for item in self.inflight]
            self.orphans += [r for _op, _chs, r in self.outbox if r is not None]
            self.inflight.clear()
            self.outbox.clear()
            self.cond.notify_all()

    def _close_pubsub(self) -> None:
        ps, self.pubsub = self.pubsub, None
        if ps is not None:
            try:
                ps.close()
            except Exception:
                pass
