"""Broadcast, reply queues and revoked ids for the in-process ``memory://`` broker.

State is shared by every broker object of one URL in this process (like the
queues); nothing crosses a process boundary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import Subscription

KEEP_SECONDS = 60.0


@dataclass
class _State:
    cond: threading.Condition = field(default_factory=threading.Condition)
    log: list[tuple[int, str, float, float, bytes]] = field(default_factory=list)  # id, channel, t, exp, data
    next_id: int = 1
    replies: dict[str, list[bytes]] = field(default_factory=dict)
    revoked: dict[str, float] = field(default_factory=dict)


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def _state(url: str) -> _State:
    with _STATES_LOCK:
        return _STATES.setdefault(url, _State())


class _BroadcastReader(Subscription):
    def __init__(self, state: _State, channel: str) -> None:
        self.state, self.channel = state, channel
        with state.cond:
            self.cursor = state.next_id - 1

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        st = self.state
        with st.cond:
            while True:
                rows = [r for r in st.log if r[0] > self.cursor and r[1] == self.channel]
                if rows:
                    self.cursor = rows[-1][0]
                    now = time.time()
                    out = [r[4] for r in rows if not r[3] or r[3] >= now]
                    if out:
                        return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                st.cond.wait(remaining)


class _ReplyReader(Subscription):
    def __init__(self, state: _State, queue: str) -> None:
        self.state, self.queue = state, queue
        with state.cond:
            state.replies.setdefault(queue, [])

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        st = self.state
        with st.cond:
            while True:
                items = st.replies.get(self.queue)
                if items:
                    st.replies[self.queue] = []
                    return items
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                st.cond.wait(remaining)

    def close(self) -> None:
        with self.state.cond:
            self.state.replies.pop(self.queue, None)


class MemoryControlMixin:
    """Mixed into :class:`MemoryBroker`; needs ``self.url``."""

    url: str

    def broadcast(self, channel: str, payload: bytes, ttl: float | None = None) -> None:
        st = _state(self.url)
        now = time.time()
        with st.cond:
            st.log = [r for r in st.log if r[2] >= now - KEEP_SECONDS and not (r[3] and r[3] < now)]
            st.log.append((st.next_id, channel, now, now + ttl if ttl else 0.0, payload))
            st.next_id += 1
            st.cond.notify_all()

    def subscribe_broadcast(self, channel: str) -> Subscription:
        return _BroadcastReader(_state(self.url), channel)

    def reply(self, queue: str, payload: bytes, ticket: str | None = None) -> None:
        st = _state(self.url)
        with st.cond:
            if queue in st.replies:  # nobody reads an undeclared reply queue
                st.replies[queue].append(payload)
                st.cond.notify_all()

    def subscribe_replies(self, queue: str) -> Subscription:
        return _ReplyReader(_state(self.url), queue)

    def store_revoked(self, task_ids: Sequence[str], expires: float) -> None:
        st = _state(self.url)
        until = time.time() + expires
        with st.cond:
            for tid in task_ids:
                st.revoked[tid] = max(until, st.revoked.get(tid, 0.0))

    def load_revoked(self) -> list[str]:
        st = _state(self.url)
        now = time.time()
        with st.cond:
            st.revoked = {k: v for k, v in st.revoked.items() if v >= now}
            return list(st.revoked)
