"""Schedule entries: what beat sends (task, arguments, options) and when (a schedule).

An :class:`Entry` is one row of the store: its definition (``task``,
``schedule`` as :meth:`BaseSchedule.to_dict` output, ``args``, ``kwargs``,
``options``, ``enabled``, ``source``) and its state (``next_run``,
``last_run``, ``total_run_count`` and the ``pending_*`` fields of a tick that
was claimed but not yet confirmed sent).  Times in the store are integer
microseconds since the Unix epoch (UTC): exact, so a compare-and-set on
``next_run`` never fails on rounding.

:func:`entries_from_config` turns ``app.conf.beat_schedule`` (which
``app.add_periodic_task`` also writes) into entries, and fails naming the
entry when one is malformed.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from ..exceptions import ImproperlyConfigured
from ..schedules import BaseSchedule, maybe_schedule, schedule_from_dict

logger = logging.getLogger("celeriac.beat")

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

#: keys a ``beat_schedule`` entry may have (Celery's ScheduleEntry arguments).
CONFIG_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative",
                         "name", "last_run_at", "total_run_count", "app"})


def to_us(dt: datetime) -> int:
    """Aware (or naive = UTC) datetime -> integer microseconds since the epoch, exactly."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def canonical_json(value: Any) -> str:
    """Stable JSON text (sorted keys), used to compare stored definitions."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class Entry:
    """One periodic task in the store."""

    name: str
    task: str
    schedule_dict: dict[str, Any]
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    source: str = "api"                 # "config" (beat_schedule) or "api" (ScheduleStore / CLI)
    next_run: int = 0                   # µs since the epoch
    last_run: int | None = None
    total_run_count: int = 0
    pending_tick: int | None = None     # claimed, send not yet confirmed
    pending_owner: str | None = None
    pending_since: int | None = None

    @property
    def schedule(self) -> BaseSchedule:
        return schedule_from_dict(self.schedule_dict)

    @property
    def next_run_at(self) -> datetime:
        return from_us(self.next_run)

    @property
    def last_run_at(self) -> datetime | None:
        return None if self.last_run is None else from_us(self.last_run)

    def definition(self) -> dict[str, Any]:
        """The user-given part, as stored (JSON-compatible)."""
        return {"task": self.task, "schedule": self.schedule_dict, "args": self.args,
                "kwargs": self.kwargs, "options": self.options}

    def __repr__(self) -> str:
        state = "" if self.enabled else " disabled"
        return f"<Entry {self.name}: {self.task} {self.schedule!r}{state} next={self.next_run_at:%Y-%m-%d %H:%M:%S}>"


# -- time zones -----------------------------------------------------------------


def _local_zone() -> tzinfo | str | None:
    """The machine's zone name (used when enable_utc is False and no timezone is set)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        return name
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:  # pragma: no cover - exotic systems
        return None
    marker = "zoneinfo/"
    if marker in target:
        return target.split(marker, 1)[1]
    return None


def app_zone(app: Any) -> tzinfo | str | None:
    """The zone crontab fields are read in: ``timezone``, else local time if ``enable_utc`` is off."""
    tz = app.conf.timezone
    if tz:
        return tz  # type: ignore[no-any-return]
    if app.conf.enable_utc is False:
        return _local_zone()
    return None


def normalize_schedule(value: Any, relative: bool = False, tz: tzinfo | str | None = None,
                       where: str = "schedule") -> BaseSchedule:
    """Seconds, timedelta, schedule, crontab or solar -> a storable schedule with ``tz`` applied.

    The caller's object is not modified.  Raises ImproperlyConfigured naming ``where``.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, timedelta, BaseSchedule)):
        raise ImproperlyConfigured(
            f"{where}: schedule must be seconds, a timedelta, schedule(), crontab() or solar(), "
            f"not {value!r}")
    try:
        sched = maybe_schedule(value, relative)
        copy = schedule_from_dict(sched.to_dict())
        if copy.tz is None and tz is not None:
            copy.tz = tz
        copy.to_dict()  # the zone must be nameable to be stored
    except AttributeError:  # not one of our schedule types: it has no to_dict()
        raise ImproperlyConfigured(
            f"{where}: {type(value).__name__} cannot be stored; use schedule(), crontab() or solar()"
        ) from None
    except (ImproperlyConfigured, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None
    return copy


def _json_ready(value: Any, where: str) -> Any:
    """Options as stored: timedeltas become seconds; anything else must be JSON-encodable."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_ready(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, where) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ImproperlyConfigured(f"{where}: option value {value!r} cannot be stored (use JSON values)")


def make_entry(name: str, task: str, schedule: Any, args: Any = (), kwargs: Any = None,
               options: Any = None, *, relative: bool = False, enabled: bool = True,
               source: str = "api", tz: tzinfo | str | None = None, where: str | None = None) -> Entry:
    """Validate one definition and build an :class:`Entry` (``next_run`` not yet set)."""
    where = where or f"schedule entry {name!r}"
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured(f"{where}: the name must be a non-empty string")
    task = getattr(task, "name", task)
    if not isinstance(task, str) or not task:
        raise ImproperlyConfigured(f"{where}: 'task' must be a task name, not {task!r}")
    if args is None:
        args = ()
    if not isinstance(args, (list, tuple)):
        raise ImproperlyConfigured(f"{where}: 'args' must be a list or tuple, not {args!r}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ImproperlyConfigured(f"{where}: 'kwargs' must be a dict, not {kwargs!r}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"{where}: 'options' must be a dict, not {options!r}")
    sched = normalize_schedule(schedule, relative, tz, where)
    return Entry(name=name, task=task, schedule_dict=sched.to_dict(), args=list(args),
                 kwargs=dict(kwargs), options=_json_ready(dict(options), where),
                 enabled=enabled, source=source)


def entries_from_config(app: Any) -> list[Entry]:
    """``app.conf.beat_schedule`` as entries (source ``config``); the first bad one raises."""
    conf = app.conf.beat_schedule or {}
    if not isinstance(conf, dict):
        raise ImproperlyConfigured(f"beat_schedule must be a dict of entries, not {type(conf).__name__}")
    tz = app_zone(app)
    out = []
    for name, spec in conf.items():
        where = f"beat_schedule entry {name!r}"
        if not isinstance(spec, dict):
            raise ImproperlyConfigured(f"{where}: expected a dict with 'task' and 'schedule', not {spec!r}")
        unknown = sorted(set(spec) - CONFIG_KEYS)
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        for key in ("task", "schedule"):
            if key not in spec:
                raise ImproperlyConfigured(f"{where}: missing {key!r}")
        out.append(make_entry(str(name), spec["task"], spec["schedule"], spec.get("args"),
                              spec.get("kwargs"), spec.get("options"),
                              relative=bool(spec.get("relative", False)), source="config", tz=tz,
                              where=where))
    return out


def warn_unregistered(app: Any, entries: list[Entry]) -> list[str]:
    """Log a warning for each enabled entry whose task this app does not know; returns their names."""
    missing = []
    for e in entries:
        if e.enabled and e.task not in app.tasks:
            missing.append(e.name)
            logger.warning("Scheduler: entry %r names task %r, which is not registered in this app; "
                           "it will be sent anyway (a worker may know it).", e.name, e.task)
    return missing
