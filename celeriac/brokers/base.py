"""The broker interface: queues of envelopes, leased to consumers until acked.

A broker works on named queues, not on AMQP concepts.  ``fetch`` leases up to N
messages to a consumer id in one round trip; a lease lasts ``lease_seconds`` and
is renewed by ``heartbeat(consumer_id)``.  A consumer that stops heartbeating
loses its leases and the messages are delivered again (``redelivered=True``).
Delayed messages (``not_before``) wait in the broker, never in a worker.

Each broker maps its driver's exceptions to :class:`OperationalError` at this
boundary.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import OperationalError
from ..protocol.bulk import BulkMessages
from ..protocol.message import Envelope

DEFAULT_LEASE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    native_delay: bool = True       # not_before is kept by the broker itself
    priority: bool = True           # priorities are honoured (0 = most urgent)
    broadcast: bool = False         # publish_broadcast/subscribe available
    global_rate_limit: bool = False  # acquire_tokens coordinates all workers
    leases: bool = True             # fetch leases; heartbeat renews; expiry redelivers


@dataclass(slots=True)
class Delivery:
    """A leased message.  Ack it, nack it, or let its lease lapse."""

    envelope: Envelope
    queue: str
    tag: str
    broker: Broker
    redelivered: bool = False
    started: bool = False           # marked as started by a previous holder
    raw: Any = None                 # broker-private data

    def ack(self) -> None:
        self.broker.ack([self])

    def requeue(self, delay: float | None = None) -> None:
        self.broker.requeue([self], delay=delay)

    def reject(self, reason: str) -> None:
        """Drop the message into the dead-letter store with a reason."""
        self.broker.dead_letter(self, reason)


@dataclass(slots=True)
class DeadLetter:
    id: str
    queue: str
    reason: str
    raw: str
    failed_at: float
    task_name: str | None = None
    task_id: str | None = None


@dataclass(slots=True)
class PublishItem:
    envelope: Envelope
    queue: str
    not_before: float | None = None  # unix time; None = now
    exchange: str = ""


@dataclass(slots=True)
class QueueStats:
    ready: int = 0
    delayed: int = 0
    leased: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Subscription(abc.ABC):
    """A reader of broadcasts (or of one reply queue), made by ``subscribe_broadcast`` /
    ``subscribe_replies``; it sees what is sent after it was made."""

    @abc.abstractmethod
    def get(self, timeout: float) -> list[bytes]:
        """Payloads received since the last call; waits up to ``timeout`` for the first."""

    def close(self) -> None:
        """Stop receiving (a reply queue is deleted)."""


class Broker(abc.ABC):
    capabilities = Capabilities()

    def __init__(self, url: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self.options = dict(options or {})

    # -- life cycle ------------------------------------------------------------
    def connect(self) -> None:
        """Open connections eagerly; raise OperationalError when unreachable."""

    def close(self) -> None:
        """Release connections (the broker can reconnect lazily afterwards)."""

    def declare_queue(self, name: str) -> None:
        """Make ``name`` known (a no-op where queues need no declaration)."""

    # -- producing -------------------------------------------------------------
    def publish(self, envelope: Envelope, queue: str, *, not_before: float | None = None,
                exchange: str = "") -> None:
        self.publish_many([PublishItem(envelope, queue, not_before, exchange)])

    @abc.abstractmethod
    def publish_many(self, items: Sequence[PublishItem]) -> None:
        """Enqueue every item in one round trip."""

    def publish_bulk(self, batch: BulkMessages, queue: str, exchange: str = "") -> None:
        """Enqueue the messages of one bulk send (ready now, all to ``queue``) in one
        round trip.  Brokers that store kombu's JSON write ``batch.kombu_json(...)``."""
        self.publish_many([PublishItem(env, queue, None, exchange) for env in batch.envelopes()])

    # -- consuming -------------------------------------------------------------
    @abc.abstractmethod
    def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
              consumer_id: str) -> list[Delivery]:
        """Lease up to ``max_count`` due messages, most urgent first; wait up to
        ``timeout`` seconds for the first one.  One round trip per batch."""

    @abc.abstractmethod
    def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Remove the messages for good."""

    @abc.abstractmethod
    def requeue(self, deliveries: Iterable[Delivery], delay: float | None = None) -> None:
        """Give the messages back (after ``delay`` seconds), marked redelivered."""

    @abc.abstractmethod
    def heartbeat(self, consumer_id: str, running: Sequence[Delivery] = ()) -> None:
        """Renew every lease ``consumer_id`` holds; record ``running`` as started."""

    @abc.abstractmethod
    def release_consumer(self, consumer_id: str) -> int:
        """Give back every message leased to ``consumer_id`` (it died); returns how many."""


    def leased(self, consumer_id: str) -> list[Delivery]:
        """The messages ``consumer_id`` holds now (used when a worker process died)."""
        return []

    # -- global rate limits ----------------------------------------------------
    def acquire_tokens(self, key: str, rate: float, burst: float = 1.0, n: float = 1.0) -> float:
        """Take ``n`` tokens from the bucket ``key`` shared by every worker on this broker.

        The bucket refills at ``rate`` tokens per second up to ``burst``.  Returns 0.0
        when the tokens were taken, else the seconds to wait before trying again
        (nothing is taken then).  One atomic round trip.  Brokers that can do this
        set ``capabilities.global_rate_limit``.
        """
        raise OperationalError(
            f"{type(self).__name__} cannot coordinate a global_rate_limit between workers; "
            "use rate_limit (per worker) or a broker that supports it (sqlite, redis)")

    # -- dead letters ----------------------------------------------------------
    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead-letter store with ``reason`` (acks it)."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    def replay_dead_letter(self, dead_id: str) -> bool:
        """Put a dead letter back on its queue; False if it does not exist."""
        raise OperationalError(f"{type(self).__name__} cannot replay dead letters")

    # -- admin -----------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every ready and delayed message of ``queue``; returns how many."""

    @abc.abstractmethod
    def stats(self, queue: str) -> QueueStats:
        """Counts of ready, delayed and leased messages."""

    def size(self, queue: str) -> int:
        return self.stats(queue).ready

    # -- broadcast, replies and revoked ids (remote control) --------------------
    def broadcast(self, channel: str, payload: bytes, ttl: float | None = None) -> None:
        """Deliver ``payload`` to every current subscriber of ``channel`` (fan-out, at most
        once); subscribers drop it after ``ttl`` seconds."""
        raise OperationalError(f"{type(self).__name__} has no broadcast (remote control)")

    def subscribe_broadcast(self, channel: str) -> Subscription:
        raise OperationalError(f"{type(self).__name__} has no broadcast (remote control)")

    def reply(self, queue: str, payload: bytes, ticket: str | None = None) -> None:
        """Send one reply to the reply queue ``queue`` (read by ``subscribe_replies``)."""
        raise OperationalError(f"{type(self).__name__} has no broadcast (remote control)")

    def subscribe_replies(self, queue: str) -> Subscription:
        """Declare the reply queue ``queue`` and read it; ``close()`` deletes it."""
        raise OperationalError(f"{type(self).__name__} has no broadcast (remote control)")

    def store_revoked(self, task_ids: Sequence[str], expires: float) -> None:
        """Remember revoked task ids for ``expires`` seconds (workers load them at start)."""

    def load_revoked(self) -> list[str]:
        """The revoked task ids not yet expired."""
        return []


def now() -> float:
    return time.time()


def take_tokens(tokens: float | None, stamp: float, at: float, rate: float, burst: float,
                n: float) -> tuple[float, float]:
    """Token-bucket arithmetic for ``acquire_tokens``: ``(tokens left, seconds to wait)``.

    ``tokens`` is None for a bucket never used (it starts full).  Wait 0.0 means granted.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate!r}")
    burst = max(float(burst), float(n))
    level = burst if tokens is None else min(burst, tokens + max(at - stamp, 0.0) * rate)
    if level >= n - 1e-9:  # (float rounding must not make a due token wait 1e-15 s)
        return max(level - n, 0.0), 0.0
    return level, (n - level) / rate

__all__ = ["Broker", "Capabilities", "DeadLetter", "Delivery", "OperationalError", "PublishItem",
           "QueueStats", "Subscription", "DEFAULT_LEASE_SECONDS"]
