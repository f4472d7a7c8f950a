"""Tick arithmetic: pure functions of a schedule, a stored ``next_run`` and a clock reading.

No I/O and no clock: the scheduler passes ``now``, so every rule here is tested
against a controllable clock.  Times are integer microseconds since the epoch.

A *tick* is one fire time of a schedule.  The store keeps, per entry, the next
tick not yet sent (``next_run``).  When ``next_run <= now`` the entry is due and
:func:`plan` says what to do, as a list of :class:`Step` s; each step is one
compare-and-set in the store (``next_run: expected -> new_next``) and, if it
wins, one send of ``tick``:

* **late by at most the catch-up window** (default ``2 * lease + 1`` seconds,
  which covers a leader handover and a quick restart): every due tick is sent,
  one claim each, in order.  Nothing is skipped and nothing is coalesced.
* **later than that** (no beat ran for a while) the *missed-ticks policy*
  applies: ``once`` (default) sends one task, late, for the latest missed tick;
  ``skip`` sends nothing and logs it; ``all`` sends every missed tick.

Either way ``next_run`` ends on the first tick after ``now``, so a restart
neither repeats a tick nor loses one without saying so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..schedules import schedule
from .entries import from_us, to_us

POLICIES = ("once", "skip", "all")
SECOND = 1_000_000
_US = timedelta(microseconds=1)
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "celeriac:beat")
#: look-back windows for the latest tick at or before now, smallest first
_WINDOWS = (60 * SECOND, 3600 * SECOND, 86400 * SECOND, 32 * 86400 * SECOND,
            367 * 86400 * SECOND, 5 * 366 * 86400 * SECOND, 401 * 366 * 86400 * SECOND)


@dataclass(frozen=True)
class Step:
    """One claim: move ``next_run`` from ``expected`` to ``new_next``; send ``tick`` if not None."""

    expected: int
    new_next: int
    tick: int | None


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    #: the policy applied to ticks later than the catch-up window (None: all ticks on time)
    policy: str | None = None
    missed_from: int | None = None
    missed_to: int | None = None


def next_after(sched: Any, t: int) -> int:
    """First tick strictly after ``t``."""
    return to_us(sched.next_run_after(from_us(t)))


def first_run(sched: Any, now: int) -> int:
    """``next_run`` of a new (or re-enabled, or rescheduled) entry: its first tick after now."""
    return next_after(sched, now)


def _fixed_interval(sched: Any) -> int | None:
    if isinstance(sched, schedule) and not sched.relative:
        return sched.run_every // _US
    return None


def latest_tick(sched: Any, start: int, now: int) -> int:
    """The last tick at or before ``now`` of the series that begins at tick ``start`` (<= now)."""
    if start >= now:
        return start
    every = _fixed_interval(sched)
    if every:
        return start + (now - start) // every * every
    # Crontab and solar ticks do not depend on where the series began (and a
    # relative interval is aligned after its first tick): find a point whose
    # next tick is <= now, then bisect for the last such point.
    lo = start - 1
    for window in _WINDOWS:
        candidate = max(start, now - window) - 1
        if next_after(sched, candidate) <= now:
            lo = candidate
            break
    hi = now  # next_after(now) > now by definition
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if next_after(sched, mid) <= now:
            lo = mid
        else:
            hi = mid
    return next_after(sched, lo)


def plan(sched: Any, next_run: int, now: int, policy: str = "once", catchup: int = 11 * SECOND,
         limit: int = 100) -> Plan:
    """What to do for an entry whose next unsent tick is ``next_run``, at time ``now``.

    At most ``limit`` steps are returned; the caller plans again for the rest.
    """
    if policy not in POLICIES:
        raise ValueError(f"Unknown missed-ticks policy {policy!r} (one of {', '.join(POLICIES)})")
    if next_run > now:
        return Plan()
    late = now - next_run > catchup
    if not late or policy == "all":
        steps: list[Step] = []
        t = next_run
        while t <= now and len(steps) < limit:
            n = next_after(sched, t)
            steps.append(Step(t, n, t))
            t = n
        return Plan(tuple(steps), "all" if late else None, next_run if late else None,
                    steps[-1].tick if late else None)
    last = latest_tick(sched, next_run, now)
    step = Step(next_run, next_after(sched, last), last if policy == "once" else None)
    return Plan((step,), policy, next_run, last)


def tick_task_id(name: str, task: str, tick: int) -> str:
    """The task id beat uses for one tick of an entry: the same in every scheduler process.

    A tick that had to be sent again (its first sender died between claiming it
    and confirming the send) keeps its id, so the two messages are recognisable.
    """
    return str(uuid.uuid5(_NAMESPACE, f"{name}\x00{task}\x00{tick}"))
