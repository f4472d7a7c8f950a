"""The scheduler loop: hold the leader lease, claim due ticks, send them.

Exactly once, by design
-----------------------
Every entry's next unsent tick (``next_run``) lives in the broker's store.  A
scheduler sends a tick only after winning a compare-and-set on it
(``next_run: tick -> the tick after``), atomic in the store, so however many
schedulers run, each tick has one winner.  A leader lease keeps the work in one
process: the holder renews it every ``min(1, lease/3)`` seconds and sends;
the others poll it as often and stand by.  When the leader dies its lease runs
out and a standby takes over within ``lease + min(1, lease/3)`` seconds
(5 s lease by default: within 6 s).  Ticks that fell due meanwhile are late by
less than the catch-up window (``2 * lease + 1`` s), so the new leader sends
each of them, in order: no tick is missed and, thanks to the compare-and-set,
none is sent twice, even if the old leader was only paused and wakes up.

A claim records the tick as *pending* until the send is confirmed.  If the
sender dies between the two, the next leader sends the tick again, with the
same task id (:func:`~celeriac.beat.ticks.tick_task_id`), once the claim is
older than the lease.  If publishing fails (broker unreachable) the tick stays
pending and is retried every second; later ticks of that entry wait behind it.

Ticks missed while no scheduler ran at all follow ``beat_missed_ticks``
(see :mod:`celeriac.beat.ticks`): ``once`` (default), ``skip`` or ``all``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..exceptions import ImproperlyConfigured, OperationalError
from ..schedules import BaseSchedule
from .entries import Entry, canonical_json, entries_from_config, from_us, warn_unregistered
from .store import BeatStore, store_for_app
from .ticks import POLICIES, SECOND, first_run, plan, tick_task_id

logger = logging.getLogger("celeriac.beat")

DEFAULT_LEASE_SECONDS = 5.0
STEPS_PER_PASS = 100
STUCK_POLL = 0.1


def _us(seconds: float) -> int:
    return int(seconds * SECOND)


def _fmt(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


class Scheduler:
    """celeriac's scheduler: entries in the broker's store, highly available.

    ``clock`` (seconds since the epoch, like :func:`time.time`) can be replaced
    to drive the loop by hand: call :meth:`setup` once, then :meth:`tick`,
    which does one pass and returns how long to sleep.
    """

    def __init__(self, app: Any, *, store: BeatStore | None = None, owner: str | None = None,
                 lease_seconds: float | None = None, missed_ticks: str | None = None,
                 catchup_seconds: float | None = None, max_interval: float | None = None,
                 clock: Callable[[], float] | None = None, sync_config: bool = True,
                 **kwargs: Any) -> None:
        conf = app.conf
        self.app = app
        self.store = store if store is not None else store_for_app(app)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        lease = lease_seconds if lease_seconds is not None else conf.get("beat_lease_seconds")
        self.lease_seconds = float(lease if lease is not None else DEFAULT_LEASE_SECONDS)
        if self.lease_seconds <= 0:
            raise ImproperlyConfigured(f"beat_lease_seconds must be positive, not {self.lease_seconds!r}")
        self.renew_interval = min(1.0, self.lease_seconds / 3)
        self.policy = missed_ticks or conf.get("beat_missed_ticks") or "once"
        if self.policy not in POLICIES:
            raise ImproperlyConfigured(
                f"beat_missed_ticks must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        catchup = catchup_seconds if catchup_seconds is not None else conf.get("beat_catchup_seconds")
        self.catchup_seconds = float(catchup) if catchup is not None else 2 * self.lease_seconds + 1
        if self.catchup_seconds < self.lease_seconds + self.renew_interval:
            logger.warning("beat_catchup_seconds=%s is shorter than a leader takeover (%.1fs): ticks due "
                           "during a takeover will follow the %r policy", self.catchup_seconds,
                           self.takeover_bound, self.policy)
        interval = max_interval if max_interval is not None else conf.get("beat_max_loop_interval")
        self.max_interval = float(interval) if interval else None
        self.clock = clock or time.time
        self.sync_config = sync_config
        self.is_leader = False
        self._standing_by = False
        self._lease_until = 0.0
        self._next_lease_at = 0.0
        self._next_recovery_at = 0.0
        self._schedules: dict[str, BaseSchedule | None] = {}
        self._stuck = False

    @property
    def takeover_bound(self) -> float:
        """Seconds within which a standby takes over after the leader dies."""
        return self.lease_seconds + self.renew_interval

    def _now(self) -> int:
        return _us(self.clock())

    # -- set-up ------------------------------------------------------------------
    def setup(self) -> list[Entry]:
        """Finalize the app, sync ``beat_schedule`` into the store, warn about unknown tasks."""
        self.app.finalize()
        entries = entries_from_config(self.app)
        if self.sync_config:
            now = self._now()
            for e in entries:
                e.next_run = first_run(e.schedule, now)
            self.store.sync_config(entries)
        stored = self.store.entries()
        warn_unregistered(self.app, stored)
        return stored

    # -- one pass ----------------------------------------------------------------
    def tick(self) -> float:
        """Renew or seek the lease, send what is due; returns seconds until the next pass."""
        now = self.clock()
        if now >= self._next_lease_at or (self.is_leader and now >= self._lease_until - self.renew_interval):
            self._refresh_lease()
        now = self.clock()
        if not self.is_leader or now >= self._lease_until:
            return max(self._next_lease_at - now, 0.01)
        if now >= self._next_recovery_at:
            self._next_recovery_at = now + self.renew_interval
            self._recover_pending()
        if self._send_due():
            return 0.0
        nxt = self.store.next_due()
        now = self.clock()
        delay = self._next_lease_at - now
        if nxt is not None:
            # an entry still due after the pass either fell due meanwhile (come back now) or is
            # stuck (a pending tick waiting for recovery, an unreadable schedule): poll gently
            delay = min(delay, max(nxt / SECOND - now, STUCK_POLL if self._stuck else 0.0))
        if self.max_interval:
            delay = min(delay, self.max_interval)
        return max(delay, 0.0)

    def _refresh_lease(self) -> None:
        started = self.clock()
        got = self.store.acquire(self.owner, _us(self.lease_seconds), _us(started))
        self._next_lease_at = started + self.renew_interval
        if got:
            self._lease_until = started + self.lease_seconds
            if not self.is_leader:
                logger.info("beat: %s holds the leader lease and sends due tasks", self.owner)
            self._standing_by = False
        elif not self._standing_by:
            holder = self.store.leader(_us(started))
            logger.info("beat: standing by; %s holds the leader lease", holder[0] if holder else "another beat")
            self._standing_by = True
        self.is_leader = got

    def _lease_ok(self) -> bool:
        return self.clock() < self._lease_until

    def _schedule(self, entry: Entry) -> BaseSchedule | None:
        key = canonical_json(entry.schedule_dict)
        if key not in self._schedules:
            try:
                self._schedules[key] = entry.schedule
            except (ImproperlyConfigured, TypeError, ValueError) as exc:
                logger.error("Scheduler: entry %r has an invalid schedule %s: %s", entry.name, key, exc)
                self._schedules[key] = None
        return self._schedules[key]

    def _send_due(self) -> bool:
        """Claim and send every due tick; True if some remain (sleep 0 and come back)."""
        now = self._now()
        more = self._stuck = False
        catchup = _us(self.catchup_seconds)
        for entry in self.store.due(now):
            sched = self._schedule(entry)
            if sched is None:
                self._stuck = True
                continue
            p = plan(sched, entry.next_run, now, self.policy, catchup, STEPS_PER_PASS)
            for i, step in enumerate(p.steps):
                if not self._lease_ok():
                    return True
                if step.tick is None:
                    if self.store.advance(entry.name, step.expected, step.new_next):
                        logger.warning("Scheduler: skipped the ticks of %s from %s to %s, missed while no "
                                       "beat ran (beat_missed_ticks='skip'); next at %s", entry.name,
                                       _fmt(p.missed_from or 0), _fmt(p.missed_to or 0), _fmt(step.new_next))
                    break
                if not self.store.claim(entry.name, step.expected, step.new_next, step.tick, self.owner,
                                        self._now()):
                    self._stuck = True  # lost the race, or a pending tick blocks it
                    break
                if i == 0 and p.policy is not None:
                    logger.warning("Scheduler: %s missed its ticks from %s to %s while no beat ran; "
                                   "sending %s (beat_missed_ticks=%r)", entry.name, _fmt(p.missed_from or 0),
                                   _fmt(p.missed_to or 0), "once, late" if p.policy == "once" else "each",
                                   p.policy)
                if not self._send(entry, step.tick):
                    self._stuck = True
                    break
            else:
                more = more or len(p.steps) == STEPS_PER_PASS
        return more

    def _send(self, entry: Entry, tick: int) -> bool:
        """Publish one claimed tick and confirm it; False if it stays pending (retried later)."""
        options = dict(entry.options)
        options.pop("task_id", None)
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.app.send_task(entry.task, list(entry.args), dict(entry.kwargs),
                               task_id=tick_task_id(entry.name, entry.task, tick), **options)
        except OperationalError as exc:
            logger.error("Scheduler: could not send %s (%s) for the tick of %s: %s; retrying",
                         entry.name, entry.task, _fmt(tick), exc)
            return False
        except Exception as exc:  # a bad definition: retrying cannot help
            logger.exception("Message Error: Couldn't apply scheduled task %s: %s", entry.name, exc)
        self.store.confirm(entry.name, tick)
        return True

    def _recover_pending(self) -> None:
        """Send again the ticks we failed to publish, and those of a leader that died mid-send."""
        now = self._now()
        for e in self.store.pending():
            if e.pending_tick is None or e.pending_owner is None or not self._lease_ok():
                continue
            if e.pending_owner == self.owner:
                self._send(e, e.pending_tick)
            elif now - (e.pending_since or 0) > _us(self.lease_seconds):
                if self.store.take_pending(e.name, e.pending_tick, e.pending_owner, self.owner, now):
                    logger.warning("Scheduler: sending %s (%s) for the tick of %s again: %s claimed it "
                                   "and stopped before confirming the send", e.name, e.task,
                                   _fmt(e.pending_tick), e.pending_owner)
                    self._send(e, e.pending_tick)

    # -- the loop ----------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; store errors are logged and retried."""
        while not stop.is_set():
            try:
                delay = self.tick()
            except OperationalError as exc:
                logger.error("beat: the broker's store is unreachable: %s; retrying", exc)
                delay = self.renew_interval
            stop.wait(delay)

    def close(self) -> None:
        """Give the lease up (a standby takes over within a second) and close the store."""
        try:
            if self.is_leader:
                self.store.release(self.owner)
                self.is_leader = False
        except OperationalError as exc:
            logger.warning("beat: could not release the leader lease: %s", exc)
        finally:
            self.store.close()
