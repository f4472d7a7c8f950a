"""An in-process broker for unit tests of pure logic (``memory://``).

Messages live in this process only: no other process can see them.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.message import Envelope
from .base import Broker, Capabilities, DeadLetter, Delivery, PublishItem, QueueStats, take_tokens
from .memory_control import MemoryControlMixin

_RATE_BUCKETS: dict[str, dict[str, tuple[float, float]]] = {}


@dataclass
class _Msg:
    id: int
    queue: str
    envelope: Envelope
    tag: str
    not_before: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0
    redelivered: bool = False
    started: bool = False


class MemoryBroker(MemoryControlMixin, Broker):
    capabilities = Capabilities(native_delay=True, priority=True, broadcast=True,
                                global_rate_limit=True, leases=True)
    _shared: dict[str, tuple[dict[int, _Msg], list[DeadLetter], threading.Condition]] = {}

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        # memory://name shares state between broker objects of one process
        state = self._shared.setdefault(url, ({}, [], threading.Condition()))
        self._msgs, self._dead, self._cond = state
        self._ids = itertools.count(int(time.time() * 1000))

    def publish_many(self, items: Sequence[PublishItem]) -> None:
        with self._cond:
            for it in items:
                mid = next(self._ids)
                self._msgs[mid] = _Msg(mid, it.queue, it.envelope, str(uuid.uuid4()), it.not_before or 0.0)
            self._cond.notify_all()

    def _available(self, queues: Sequence[str], now: float) -> list[_Msg]:
        out = []
        for m in self._msgs.values():
            if m.queue in queues and m.not_before <= now:
                if m.owner is not None and m.lease_until < now:
                    m.owner, m.redelivered = None, True
                if m.owner is None:
                    out.append(m)
        out.sort(key=lambda m: (m.envelope.priority, m.id))
        return out

    def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
              consumer_id: str) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.time()
                ready = self._available(queues, now)[:max_count] if max_count > 0 else []
                if ready:
                    for m in ready:
                        m.owner, m.lease_until = consumer_id, now + self.lease_seconds
                    return [Delivery(m.envelope, m.queue, m.tag, self, m.redelivered, m.started, m.id)
                            for m in ready]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, 0.05))

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                self._msgs.pop(d.raw, None)

    def requeue(self, deliveries: Iterable[Delivery], delay: float | None = None) -> None:
        with self._cond:
            for d in deliveries:
                m = self._msgs.get(d.raw)
                if m:
                    m.owner, m.redelivered = None, True
                    m.not_before = time.time() + delay if delay else 0.0
            self._cond.notify_all()

    def heartbeat(self, consumer_id: str, running: Sequence[Delivery] = ()) -> None:
        with self._cond:
            until = time.time() + self.lease_seconds
            for m in self._msgs.values():
                if m.owner == consumer_id:
                    m.lease_until = until
            for d in running:
                if d.raw in self._msgs:
                    self._msgs[d.raw].started = True

    def leased(self, consumer_id: str) -> list[Delivery]:
        with self._cond:
            return [Delivery(m.envelope, m.queue, m.tag, self, m.redelivered, m.started, m.id)
                    for m in self._msgs.values() if m.owner == consumer_id]

    def release_consumer(self, consumer_id: str) -> int:
        n = 0
        with self._cond:
            for m in self._msgs.values():
                if m.owner == consumer_id:
                    m.owner, m.redelivered = None, True
                    n += 1
            self._cond.notify_all()
        return n

    def acquire_tokens(self, key: str, rate: float, burst: float = 1.0, n: float = 1.0) -> float:
        with self._cond:
            buckets = _RATE_BUCKETS.setdefault(self.url, {})  # shared like the queues
            at = time.time()
            row = buckets.get(key)
            tokens, wait = take_tokens(None if row is None else row[0], 0.0 if row is None else row[1],
                                       at, rate, burst, n)
            buckets[key] = (tokens, at)
            return wait

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        from ..protocol.message import to_kombu_json
        h = delivery.envelope.headers
        with self._cond:
            self._msgs.pop(delivery.raw, None)
            self._dead.append(DeadLetter(str(len(self._dead) + 1), delivery.queue, reason,
                                         to_kombu_json(delivery.envelope, "", delivery.queue, delivery.tag),
                                         time.time(), h.get("task"), h.get("id")))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            return list(reversed(self._dead))[:limit]

    def replay_dead_letter(self, dead_id: str) -> bool:
        from ..protocol.message import from_kombu_json
        with self._cond:
            for i, dl in enumerate(self._dead):
                if dl.id == dead_id:
                    del self._dead[i]
                    break
            else:
                return False
        self.publish(from_kombu_json(dl.raw), dl.queue)
        return True

    def purge(self, queue: str) -> int:
        with self._cond:
            ids = [i for i, m in self._msgs.items() if m.queue == queue and m.owner is None]
            for i in ids:
                del self._msgs[i]
            return len(ids)

    def stats(self, queue: str) -> QueueStats:
        now = time.time()
        s = QueueStats()
        with self._cond:
            for m in self._msgs.values():
                if m.queue != queue:
                    continue
                if m.owner is not None and m.lease_until >= now:
                    s.leased += 1
                elif m.not_before > now:
                    s.delayed += 1
                else:
                    s.ready += 1
        return s
