"""Periodic tasks: a scheduler whose ticks are sent exactly once, however many run.

Modules:

* :mod:`.entries`   -- an entry (task, schedule, arguments, options) and ``beat_schedule`` parsing
* :mod:`.ticks`     -- tick arithmetic: pure functions of a schedule, ``next_run`` and ``now``
* :mod:`.store`     -- the storage interface (entries + leader lease), memory store, selection by URL
* :mod:`.store_sqlite`, :mod:`.store_redis` -- the same in the broker's SQLite file / Redis
* :mod:`.scheduler` -- the loop: lease, claim, send (read its docstring for the guarantees)
* :mod:`.api`       -- :class:`ScheduleStore`, changing entries at run time
* :mod:`.service`   -- ``celeriac beat`` and ``worker -B``

Settings (celeriac's own): ``beat_lease_seconds`` (5.0; a standby takes over
within lease + min(1, lease/3) seconds), ``beat_missed_ticks`` (``once`` |
``skip`` | ``all``: ticks missed while no beat ran) and ``beat_catchup_seconds``
(default ``2 * lease + 1``: ticks later than this count as missed).
"""

from __future__ import annotations

from .api import ScheduleEntryError, ScheduleStore
from .entries import Entry, entries_from_config
from .scheduler import Scheduler
from .service import Beat, EmbeddedBeat, resolve_scheduler
from .store import BeatStore, MemoryBeatStore, store_for_app, store_for_url
from .ticks import tick_task_id

#: Celery's names for the same things
PersistentScheduler = Scheduler
ScheduleEntry = Entry
Service = Beat
EmbeddedService = EmbeddedBeat

__all__ = ["Beat", "BeatStore", "EmbeddedBeat", "EmbeddedService", "Entry", "MemoryBeatStore",
           "PersistentScheduler", "ScheduleEntry", "ScheduleEntryError", "ScheduleStore", "Scheduler",
           "Service", "entries_from_config", "resolve_scheduler", "store_for_app", "store_for_url",
           "tick_task_id"]
