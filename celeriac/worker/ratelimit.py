"""Rate limits in the worker: ``rate_limit`` (per worker) and ``global_rate_limit`` (all workers).

``rate_limit='10/s'`` keeps to Celery's meaning: a limit for one worker (one
``celeriac worker`` command), whatever its pool.  The threads and solo pools
share one token bucket per task; a prefork child takes ``1/N`` of the rate,
where N is the pool's (maximum) number of processes, since each child fetches
for itself.  The bucket holds one token, as Celery's does: no bursts.

``global_rate_limit='100/s'`` (beyond Celery) is one bucket per task shared by
every worker on the broker, kept by the broker (``Broker.acquire_tokens``).

A task over its limit waits for its token in the work loop when the wait is
short (up to ``HOLD_SECONDS``; its message stays leased in the broker meanwhile);
a longer wait sends the message back to the broker, due when a token will be
there, so that nothing waits long in a worker's memory.  Nothing costs more
than an attribute check when no limit is set.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ..task import _parse_rate

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Task

logger = logging.getLogger("celeriac.worker")
HOLD_SECONDS = 1.0


class TokenBucket:
    """A bucket refilled at ``rate`` tokens/s up to ``capacity``; ``take`` never blocks."""

    __slots__ = ("rate", "capacity", "tokens", "stamp", "horizon")

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = rate
        self.capacity = max(capacity, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.horizon = 0.0

    def take(self, n: float = 1.0, now: float | None = None) -> float:
        """0.0 when ``n`` tokens were taken, else the seconds until they will be there."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n - 1e-9:
            self.tokens = max(self.tokens - n, 0.0)
            return 0.0
        return (n - self.tokens) / self.rate

    def give_back(self, n: float = 1.0) -> None:
        self.tokens = min(self.capacity, self.tokens + n)

    def defer(self, wait: float, now: float | None = None) -> float:
        """The delay for one more message over the limit: deferred messages are spaced
        ``1/rate`` apart, so they come back one per token instead of all at once."""
        now = time.monotonic() if now is None else now
        self.horizon = max(self.horizon, now + wait - 1.0 / self.rate) + 1.0 / self.rate
        return self.horizon - now


class RateLimits:
    """The per-task buckets of one worker (or one prefork child, with ``share`` < 1)."""

    def __init__(self, app: Celery, share: float = 1.0) -> None:
        conf = app.conf
        self.app = app
        self.share = share
        self.disabled = bool(conf.worker_disable_rate_limits)
        self.default = conf.task_default_rate_limit
        self._buckets: dict[str, tuple[Any, TokenBucket]] = {}
        self._lock = threading.Lock()
        self._global_ok: bool | None = None

    def delay_for(self, task: Task[Any, Any]) -> float:
        """0.0 when ``task`` may run now, else how long its message should wait in the broker."""
        if self.disabled:
            return 0.0
        spec = task.rate_limit if task.rate_limit is not None else self.default
        bucket = None
        if spec:
            bucket = self._bucket(task.name or "", spec)
            if bucket is not None:
                with self._lock:
                    wait = bucket.take()
                if wait:
                    return wait
        glob = task.global_rate_limit
        if glob:
            wait = self._global(task, glob)
            if wait and bucket is not None:
                with self._lock:
                    bucket.give_back()
            return wait
        return 0.0

    def defer(self, task: Task[Any, Any], wait: float) -> float:
        """The delay for a message sent back to the broker: those of one task are spaced
        one token apart, so that they come back one at a time instead of all at once."""
        found = self._buckets.get(task.name or "")
        if found is None:
            return wait
        with self._lock:
            return found[1].defer(wait)

    def _bucket(self, name: str, spec: Any) -> TokenBucket | None:
        found = self._buckets.get(name)
        if found is not None and found[0] == spec:
            return found[1]
        rate = _parse_rate(spec)  # a limit changed at run time (app.control.rate_limit) applies
        bucket = TokenBucket(rate * self.share) if rate else None
        with self._lock:
            if bucket is None:
                self._buckets.pop(name, None)
            else:
                self._buckets[name] = (spec, bucket)
        return bucket

    def _global(self, task: Task[Any, Any], spec: Any) -> float:
        rate = _parse_rate(spec)
        if not rate:
            return 0.0
        broker = self.app.broker
        if self._global_ok is None:
            self._global_ok = bool(getattr(broker.capabilities, "global_rate_limit", False))
            if not self._global_ok:
                logger.error("Task %s has global_rate_limit=%r but %s cannot coordinate it; "
                             "the global limit is not applied", task.name, spec, type(broker).__name__)
        if not self._global_ok:
            return 0.0
        wait = float(broker.acquire_tokens(f"task:{task.name}", rate, 1.0, 1.0))
        # a little jitter so that workers told to wait the same time do not all come back at once
        return wait + random.random() * (1.0 / rate) if wait else 0.0
