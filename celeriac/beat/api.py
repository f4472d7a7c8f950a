"""Change the schedule at run time: add, update, remove, enable and disable entries.

Changes go straight into the broker's store; a running beat sees them on its
next pass (within a second), without a restart.  The ``celeriac schedule``
command is a thin layer over this class::

    from celeriac.beat import ScheduleStore
    from celeriac.schedules import crontab

    store = ScheduleStore(app)
    store.add("nightly-report", "reports.build", crontab(minute=0, hour=3), args=["daily"],
              options={"queue": "reports"})
    store.disable("nightly-report")
    store.update("nightly-report", schedule=crontab(minute=30, hour=3))
    store.enable("nightly-report")   # the next tick is the first one after now
    store.remove("nightly-report")

Entries from ``beat_schedule`` (``source == 'config'``) are rewritten from the
config when a beat starts; entries added here are kept.  Enabling a disabled
entry does not send the ticks that passed while it was disabled.
"""

from __future__ import annotations

import time
from typing import Any

from ..exceptions import CeleryError
from .entries import Entry, app_zone, make_entry
from .store import BeatStore, store_for_app
from .ticks import SECOND, first_run


class ScheduleEntryError(CeleryError, LookupError):
    """No entry of that name, or one exists already."""


def _now() -> int:
    return int(time.time() * SECOND)


class ScheduleStore:
    """The entries of the store-backed scheduler, for programs and the CLI."""

    def __init__(self, app: Any, store: BeatStore | None = None) -> None:
        self.app = app
        self.store = store if store is not None else store_for_app(app)

    def add(self, name: str, task: Any, schedule: Any, args: Any = (), kwargs: Any = None,
            options: Any = None, enabled: bool = True, relative: bool = False,
            replace: bool = False) -> Entry:
        """Add an entry (``replace=True`` overwrites one of the same name).  ``task`` is a name or a task."""
        entry = make_entry(name, task, schedule, args, kwargs, options, relative=relative,
                           enabled=enabled, source="api", tz=app_zone(self.app))
        entry.next_run = first_run(entry.schedule, _now())
        if not self.store.put(entry, replace=replace):
            raise ScheduleEntryError(f"A schedule entry named {name!r} exists already "
                                     "(use replace=True, or update())")
        return self._get(name)

    def update(self, name: str, **changes: Any) -> Entry:
        """Change some of ``task``, ``schedule``, ``args``, ``kwargs``, ``options``, ``relative``.

        A new schedule restarts the entry from its first tick after now.
        """
        unknown = set(changes) - {"task", "schedule", "args", "kwargs", "options", "relative"}
        if unknown:
            raise TypeError(f"update() got unexpected field(s): {', '.join(sorted(unknown))}")
        old = self._get(name)
        entry = make_entry(name, changes.get("task", old.task), changes.get("schedule", old.schedule),
                           changes.get("args", old.args), changes.get("kwargs", old.kwargs),
                           changes.get("options", old.options), relative=changes.get("relative", False),
                           source=old.source, tz=app_zone(self.app))
        entry.next_run = first_run(entry.schedule, _now())
        self.store.put(entry, replace=True)
        return self._get(name)

    def remove(self, name: str) -> None:
        if not self.store.delete(name):
            raise ScheduleEntryError(f"No schedule entry named {name!r}")

    def enable(self, name: str) -> Entry:
        entry = self._get(name)
        self.store.set_enabled(name, True, first_run(entry.schedule, _now()))
        return self._get(name)

    def disable(self, name: str) -> Entry:
        if not self.store.set_enabled(name, False, 0):
            raise ScheduleEntryError(f"No schedule entry named {name!r}")
        return self._get(name)

    def get(self, name: str) -> Entry | None:
        return self.store.get(name)

    def _get(self, name: str) -> Entry:
        entry = self.store.get(name)
        if entry is None:
            raise ScheduleEntryError(f"No schedule entry named {name!r}")
        return entry

    def list(self) -> list[Entry]:
        """Every entry, by name."""
        return self.store.entries()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ScheduleStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
