"""Time limits inside the process that runs a task, with one ``SIGALRM`` timer.

What each pool enforces (see docs/time-limits.md):

* prefork: the soft limit raises :class:`SoftTimeLimitExceeded` in the task (this
  timer); the hard limit is enforced by the supervisor, which kills the child and
  replaces it (the task's result is FAILURE with ``TimeLimitExceeded``).
* solo: both limits with this timer: the soft limit raises
  ``SoftTimeLimitExceeded``, the hard one raises ``TimeLimitExceeded`` inside the
  task (the process is not killed, so a task that swallows every exception, or
  is stuck in C code that never returns to Python, is not stopped).
* threads: none; a thread cannot be interrupted.

The timer only raises while a task's ``run`` is on the stack (``start``..``stop``),
so an alarm that arrives just after a task returned is ignored.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from ..exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

_EPSILON = 0.0005


class AlarmTimer:
    """Soft and (optionally) hard limits for the task running in this main thread."""

    def __init__(self, enforce_hard: bool) -> None:
        self.enforce_hard = enforce_hard
        self.soft = 0.0
        self.hard = 0.0
        self.soft_at = 0.0
        self.hard_at = 0.0
        self.active = False
        signal.signal(signal.SIGALRM, self._fire)

    def prepare(self, soft: float | None, hard: float | None) -> bool:
        """Set the limits of the next task; False when there is nothing to enforce."""
        self.soft = float(soft or 0.0)
        self.hard = float(hard or 0.0) if self.enforce_hard else 0.0
        return bool(self.soft or self.hard)

    def start(self) -> None:
        now = time.monotonic()
        self.soft_at = now + self.soft if self.soft else 0.0
        self.hard_at = now + self.hard if self.hard else 0.0
        self.active = True
        self._arm(now)

    def stop(self) -> None:
        if self.active or self.soft_at or self.hard_at:
            self.active = False
            self.soft_at = self.hard_at = 0.0
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _arm(self, now: float) -> None:
        due = [t for t in (self.soft_at, self.hard_at) if t]
        if due:
            signal.setitimer(signal.ITIMER_REAL, max(min(due) - now, _EPSILON))

    def _fire(self, signum: int, frame: Any) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if self.soft_at and now + _EPSILON >= self.soft_at:
            self.soft_at = 0.0
            self._arm(now)  # the hard limit, if any, still runs
            raise SoftTimeLimitExceeded(self.soft)
        if self.hard_at and now + _EPSILON >= self.hard_at:
            self.active = False
            self.hard_at = 0.0
            raise TimeLimitExceeded(self.hard)
        self._arm(now)  # woke early
