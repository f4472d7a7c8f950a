"""Schedules for periodic tasks: fixed intervals, crontab expressions and solar events.

Mirrors :mod:`celery.schedules`.  Every schedule answers three questions:

* ``is_due(last_run_at) -> schedstate(is_due, next)``: Celery's contract;
  ``next`` is the number of seconds until the scheduler should look again.
* ``remaining_estimate(last_run_at) -> timedelta``: time from now until the
  first run after ``last_run_at`` (negative when overdue).
* ``next_run_after(after) -> datetime``: the first fire time strictly after
  ``after``.  It does not read the clock, so a scheduler can use it for exact,
  deterministic, exactly-once ticks.

Time zones: a schedule has a ``tz`` (a :class:`zoneinfo.ZoneInfo`, a zone
name, a :class:`datetime.timezone`, or None for UTC).  Crontab fields are
wall-clock times in that zone.  A wall time skipped by a daylight-saving gap
fires once, at the first instant after the gap; a wall time that occurs twice
fires once, at its first occurrence.  Naive datetimes given to a schedule are
taken as UTC; datetimes returned are aware and in UTC.

Schedules persist as plain JSON-compatible dicts: ``s.to_dict()`` and
``schedule_from_dict(d)`` round-trip (``schedule_from_dict(s.to_dict()) == s``).
"""

from __future__ import annotations

import abc
import calendar
import numbers
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celeriac import _solar
from celeriac.exceptions import ImproperlyConfigured

__all__ = ["ParseException", "schedstate", "BaseSchedule", "schedule", "crontab", "crontab_parser",
           "solar", "maybe_schedule", "next_run_after", "schedule_from_dict"]  # fmt: skip

UTC = timezone.utc
NowFun = Callable[[], datetime]
TzLike = tzinfo | str | None


class ParseException(ImproperlyConfigured):
    """A crontab field could not be parsed or is out of range."""


class schedstate(NamedTuple):
    """Result of ``is_due``: whether to run now, and seconds until the next check."""

    is_due: bool
    next: float


# -- time-zone helpers --------------------------------------------------------

_OFFSET_RE = re.compile(r"^([+-])(\d\d):(\d\d)$")


def _coerce_tz(tz: TzLike) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str):
        m = _OFFSET_RE.match(tz)
        if m:
            sign = -1 if m.group(1) == "-" else 1
            return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ImproperlyConfigured(f"Unknown time zone {tz!r}") from exc
    raise ImproperlyConfigured(f"tz must be a tzinfo, a zone name or None, not {type(tz).__name__}")


def _tz_name(tz: tzinfo | None) -> str | None:
    """A string that :func:`_coerce_tz` turns back into ``tz`` (None stays None)."""
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo):
        return tz.key
    if isinstance(tz, timezone):
        off = tz.utcoffset(None)
        if not off:
            return "UTC"
        total = int(off.total_seconds()) // 60
        sign = "-" if total < 0 else "+"
        return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"
    return str(tz)


def _tz_key(tz: tzinfo | None) -> str:
    return _tz_name(tz) or "UTC"


def _aware(dt: datetime) -> datetime:
    """Treat a naive datetime as UTC."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _to_utc(dt: datetime) -> datetime:
    return _aware(dt).astimezone(UTC)


def _wall(dt_utc: datetime, tz: tzinfo | None) -> datetime:
    """Naive local wall-clock time of an aware instant."""
    return dt_utc.astimezone(tz or UTC).replace(tzinfo=None)


def _resolve_wall(wall: datetime, tz: tzinfo | None) -> datetime:
    """Map a naive wall time in ``tz`` to one UTC instant.

    A wall time inside a DST gap maps to the first instant after the gap; a
    wall time that occurs twice maps to its first occurrence.
    """
    if tz is None:
        return wall.replace(tzinfo=UTC)
    early, late = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    off0, off1 = early.utcoffset(), late.utcoffset()
    if off0 is None or off1 is None or off0 == off1:
        return early.astimezone(UTC)
    u0 = (wall - off0).replace(tzinfo=UTC)
    u1 = (wall - off1).replace(tzinfo=UTC)
    if _wall(u0, tz) == wall or _wall(u1, tz) == wall:  # repeated wall time
        return min(u0, u1)
    # Skipped wall time: bisect for the transition between the two candidates.
    lo, hi = min(u0, u1), max(u0, u1)
    after_offset = hi.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = (lo + (hi - lo) / 2).replace(microsecond=0)
        if not lo < mid < hi:
            break
        if mid.astimezone(tz).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi


def _truncate(wall: datetime, delta: timedelta) -> datetime:
    """Round ``wall`` down to the largest unit (day, hour, minute) not longer than ``delta``."""
    secs = delta.total_seconds()
    if secs >= 86400:
        return wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if secs >= 3600:
        return wall.replace(minute=0, second=0, microsecond=0)
    if secs >= 60:
        return wall.replace(second=0, microsecond=0)
    return wall.replace(microsecond=0)


# -- base ---------------------------------------------------------------------


class BaseSchedule(abc.ABC):
    """Shared clock, time-zone and ``is_due`` logic."""

    type_name = "base"

    def __init__(self, nowfun: NowFun | None = None, tz: TzLike = None, app: Any = None) -> None:
        # ``app`` is accepted for Celery compatibility and not used.
        self.nowfun = nowfun
        self.tz = tz

    @property
    def tz(self) -> tzinfo | None:
        """Time zone of the schedule's wall-clock fields (None means UTC)."""
        return self._tz

    @tz.setter
    def tz(self, value: TzLike) -> None:
        self._tz = _coerce_tz(value)

    def now(self) -> datetime:
        """Current time, aware (``nowfun`` if given; naive results are UTC)."""
        if self.nowfun is not None:
            return _aware(self.nowfun())
        return datetime.now(UTC)

    def maybe_make_aware(self, dt: datetime) -> datetime:
        return _aware(dt)

    @abc.abstractmethod
    def next_run_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``."""

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first run after ``last_run_at`` (negative when overdue)."""
        return self.next_run_after(last_run_at) - self.now()

    def _next_check_when_due(self, now: datetime) -> float:
        return max((self.next_run_after(now) - now).total_seconds(), 0.0)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Return ``(is_due, seconds_until_next_check)``."""
        now = self.now()
        remaining = (self.next_run_after(last_run_at) - now).total_seconds()
        if remaining <= 0:
            return schedstate(True, self._next_check_when_due(now))
        return schedstate(False, remaining)

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]:
        """The schedule's own fields, for ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description; :func:`schedule_from_dict` rebuilds the schedule (not ``nowfun``)."""
        return {"type": self.type_name, **self._state(), "tz": _tz_name(self.tz)}


# -- fixed interval -------------------------------------------------------------

_TIME_UNITS = (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0))


def _humanize(seconds: float) -> str:
    for unit, size in _TIME_UNITS:
        if seconds >= size:
            n = seconds / size
            return f"{n:.2f} {unit}{'' if n == 1 else 's'}"
    return f"{seconds:.2f} seconds" if seconds else "now"


class schedule(BaseSchedule):
    """Run every ``run_every`` (seconds or a timedelta).

    With ``relative=True`` the next run time is rounded down to the
    resolution of the interval (day, hour, minute or second, in ``tz``), so
    ``schedule(3600, relative=True)`` runs at the top of each hour.
    """

    type_name = "schedule"

    def __init__(
        self,
        run_every: float | timedelta | None = None,
        relative: bool = False,
        nowfun: NowFun | None = None,
        app: Any = None,
        tz: TzLike = None,
    ) -> None:
        if isinstance(run_every, bool) or not isinstance(run_every, (numbers.Real, timedelta)):
            raise ImproperlyConfigured(f"run_every must be seconds or a timedelta, not {run_every!r}")
        if not isinstance(run_every, timedelta):
            run_every = timedelta(seconds=float(run_every))
        if run_every <= timedelta(0):
            raise ImproperlyConfigured(f"run_every must be positive, not {run_every!r}")
        self.run_every: timedelta = run_every
        self.relative = bool(relative)
        super().__init__(nowfun=nowfun, tz=tz, app=app)

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    @property
    def human_seconds(self) -> str:
        return _humanize(self.seconds)

    def next_run_after(self, after: datetime) -> datetime:
        after = _to_utc(after)
        end = after + self.run_every
        if not self.relative:
            return end
        rounded = _resolve_wall(_truncate(_wall(end, self.tz), self.run_every), self.tz)
        return rounded if rounded > after else end

    def _next_check_when_due(self, now: datetime) -> float:
        return self.seconds

    def _state(self) -> dict[str, Any]:
        return {"run_every": self.seconds, "relative": self.relative}

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return (self.run_every, self.relative, _tz_key(self.tz)) == (
                other.run_every,
                other.relative,
                _tz_key(other.tz),
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type_name, self.run_every, self.relative, _tz_key(self.tz)))


# -- crontab --------------------------------------------------------------------

_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")  # fmt: skip
_DOW_LOOKUP = {**{n[:3]: i for i, n in enumerate(_DAY_NAMES)}, **{n: i for i, n in enumerate(_DAY_NAMES)}}
_MONTH_LOOKUP = {
    **{n[:3]: i for i, n in enumerate(_MONTH_NAMES, 1)},
    **{n: i for i, n in enumerate(_MONTH_NAMES, 1)},
}

#: field -> (lowest value, highest value, names accepted, what a name is called)
_FIELDS: dict[str, tuple[int, int, dict[str, int] | None, str]] = {
    "minute": (0, 59, None, ""),
    "hour": (0, 23, None, ""),
    "day_of_week": (0, 6, _DOW_LOOKUP, "day name"),
    "day_of_month": (1, 31, None, ""),
    "month_of_year": (1, 12, _MONTH_LOOKUP, "month name"),
}


class _FieldError(Exception):
    """Internal: the reason a field is invalid, wrapped into ParseException by the caller."""


class crontab_parser:
    """Expand one crontab field into a set of ints.

    ``crontab_parser(max_, min_)`` accepts values ``min_ .. min_ + max_ - 1``
    (Celery's convention: ``crontab_parser(60)`` for minutes,
    ``crontab_parser(31, 1)`` for days of the month).  Syntax: ``*``, ``n``,
    ``a-b`` (wrapping past the maximum when ``b < a``), ``*/s``, ``a-b/s``,
    ``a/s`` (``a`` to the maximum) and comma-separated lists of those.
    """

    def __init__(self, max_: int = 60, min_: int = 0, names: dict[str, int] | None = None,
                 name_kind: str = "name") -> None:  # fmt: skip
        self.min_, self.max_ = min_, min_ + max_ - 1
        self.names = names
        self.name_kind = name_kind

    def parse(self, spec: str) -> set[int]:
        try:
            return self._parse(spec)
        except _FieldError as exc:
            raise ParseException(f"Invalid crontab spec {spec!r}: {exc}") from None

    def _parse(self, spec: str) -> set[int]:
        result: set[int] = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise _FieldError("empty list element")
            result.update(self._parse_part(part))
        return result

    def _parse_part(self, part: str) -> list[int]:
        base, slash, step_text = part.partition("/")
        base = base.strip()
        step = 1
        if slash:
            step_text = step_text.strip()
            if not step_text.isdigit() or int(step_text) < 1:
                raise _FieldError(f"step {step_text!r} is not a positive integer")
            step = int(step_text)
        if base == "*":
            values = list(range(self.min_, self.max_ + 1))
        elif "-" in base:
            first, _, last = base.partition("-")
            lo, hi = self._value(first), self._value(last)
            if hi >= lo:
                values = list(range(lo, hi + 1))
            else:  # wrap around, e.g. fri-mon or 22-2
                values = list(range(lo, self.max_ + 1)) + list(range(self.min_, hi + 1))
        else:
            lo = self._value(base)
            values = list(range(lo, self.max_ + 1)) if slash else [lo]
        return values[::step]

    def _value(self, token: str) -> int:
        token = token.strip()
        if not token:
            raise _FieldError("empty value (negative numbers are not supported)")
        if token.isdigit():
            n = int(token)
            if not self.min_ <= n <= self.max_:
                raise _FieldError(f"{n} is out of range {self.min_}-{self.max_}")
            return n
        if self.names is not None and token.lower() in self.names:
            return self.names[token.lower()]
        kind = f" or {self.name_kind}" if self.names is not None else ""
        raise _FieldError(f"{token!r} is not a number{kind}")


def _field_text(field: str, value: Any) -> str:
    """Normalise a crontab argument (str, int or iterable of those) to a spec string."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    items = list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else []
    if not items or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in items):
        raise ParseException(f"Invalid crontab field {field}={value!r}: expected an int, a string or ints")
    if all(isinstance(i, int) for i in items):
        return ",".join(str(i) for i in sorted(set(items)))
    ordered = sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    return ",".join(str(i) for i in ordered)


def _parse_field(field: str, value: Any) -> tuple[str, set[int]]:
    text = _field_text(field, value)
    lo, hi, names, kind = _FIELDS[field]
    parser = crontab_parser(hi - lo + 1, lo, names, kind)
    try:
        return text, parser._parse(text)
    except _FieldError as exc:
        raise ParseException(f"Invalid crontab field {field}={text!r}: {exc}") from None


class crontab(BaseSchedule):
    """Cron-like schedule: fires at every minute that matches all five fields.

    Fields are wall-clock values in ``tz``.  ``day_of_week`` is 0-6 with
    Sunday = 0 (or names: ``sun``, ``mon-fri``...).  As in Celery, when both
    ``day_of_month`` and ``day_of_week`` are restricted a day must match both.
    """

    type_name = "crontab"
    _SEARCH_YEARS = 401  # the Gregorian calendar repeats every 400 years

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
        nowfun: NowFun | None = None,
        app: Any = None,
        tz: TzLike = None,
    ) -> None:
        self._orig_minute, self.minute = _parse_field("minute", minute)
        self._orig_hour, self.hour = _parse_field("hour", hour)
        self._orig_day_of_week, self.day_of_week = _parse_field("day_of_week", day_of_week)
        self._orig_day_of_month, self.day_of_month = _parse_field("day_of_month", day_of_month)
        self._orig_month_of_year, self.month_of_year = _parse_field("month_of_year", month_of_year)
        longest = max(calendar.monthrange(2000, m)[1] for m in self.month_of_year)  # 2000 is a leap year
        if min(self.day_of_month) > longest:
            raise ImproperlyConfigured(
                f"crontab day_of_month={self._orig_day_of_month!r} never occurs in "
                f"month_of_year={self._orig_month_of_year!r}"
            )
        super().__init__(nowfun=nowfun, tz=tz, app=app)

    @classmethod
    def from_string(cls, spec: str, **kwargs: Any) -> crontab:
        """Build from a five-field cron line: ``minute hour day_of_month month_of_year day_of_week``."""
        parts = spec.split()
        if len(parts) != 5:
            raise ParseException(f"Invalid crontab {spec!r}: expected 5 fields, got {len(parts)}")
        minute, hour, dom, moy, dow = parts
        return cls(minute, hour, dow, dom, moy, **kwargs)

    def _days_from(self, start: date) -> Iterator[date]:
        """Matching local dates on or after ``start``, in order."""
        months = sorted(self.month_of_year)
        days = sorted(self.day_of_month)
        for year in range(start.year, start.year + self._SEARCH_YEARS):
            for month in months:
                if (year, month) < (start.year, start.month):
                    continue
                length = calendar.monthrange(year, month)[1]
                for dom in days:
                    if dom > length:
                        break
                    day = date(year, month, dom)
                    if day >= start and (day.weekday() + 1) % 7 in self.day_of_week:
                        yield day
        raise RuntimeError(f"{self!r} has no run time within {self._SEARCH_YEARS} years")

    def next_run_after(self, after: datetime) -> datetime:
        after = _to_utc(after)
        tz = self.tz
        # Start a little before the wall time of ``after``: after a fall-back,
        # wall times earlier than "now" on the clock can still lie ahead.
        fold = timedelta(0)
        if tz is not None:
            before = (after - timedelta(days=1)).astimezone(tz).utcoffset() or timedelta(0)
            later = (after + timedelta(days=1)).astimezone(tz).utcoffset() or timedelta(0)
            fold = abs(before - later)
        lower = (_wall(after, tz) - fold - timedelta(minutes=1)).replace(second=0, microsecond=0)
        hours, minutes = sorted(self.hour), sorted(self.minute)
        for day in self._days_from(lower.date()):
            for hour in hours:
                if day == lower.date() and hour < lower.hour:
                    continue
                for minute in minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    if wall < lower:
                        continue
                    fire = _resolve_wall(wall, tz)
                    if fire > after:
                        return fire
        raise AssertionError("unreachable")  # _days_from raises when exhausted

    def _state(self) -> dict[str, Any]:
        return {
            "minute": self._orig_minute,
            "hour": self._orig_hour,
            "day_of_week": self._orig_day_of_week,
            "day_of_month": self._orig_day_of_month,
            "month_of_year": self._orig_month_of_year,
        }

    def _key(self) -> tuple[Any, ...]:
        return (
            frozenset(self.minute),
            frozenset(self.hour),
            frozenset(self.day_of_week),
            frozenset(self.day_of_month),
            frozenset(self.month_of_year),
            _tz_key(self.tz),
        )

    def __repr__(self) -> str:
        return (
            f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
            f"{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>"
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type_name, *self._key()))


# -- solar ----------------------------------------------------------------------


class solar(BaseSchedule):
    """Fire at a solar event (``sunrise``, ``dusk_civil``...) at a latitude/longitude.

    Longitude is positive east.  Days on which the event does not happen
    (polar day or night) are skipped.  ``tz`` is stored but does not affect
    the result: solar events are absolute instants.
    """

    type_name = "solar"

    def __init__(
        self,
        event: str,
        lat: float,
        lon: float,
        nowfun: NowFun | None = None,
        app: Any = None,
        tz: TzLike = None,
    ) -> None:
        if event not in _solar.EVENTS:
            raise ImproperlyConfigured(
                f"Invalid event specified: {event!r} (one of {', '.join(_solar.EVENTS)})"
            )
        for name, value, limit in (("latitude", lat, 90), ("longitude", lon, 180)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not -limit <= value <= limit:
                raise ImproperlyConfigured(f"Invalid {name}: {value!r} (must be within -{limit}..{limit})")
        self.event = event
        self.lat = float(lat)
        self.lon = float(lon)
        super().__init__(nowfun=nowfun, tz=tz, app=app)

    def next_run_after(self, after: datetime) -> datetime:
        return _solar.next_event(self.event, self.lat, self.lon, _to_utc(after))

    def _state(self) -> dict[str, Any]:
        return {"event": self.event, "lat": self.lat, "lon": self.lon}

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (self.event, self.lat, self.lon) == (other.event, other.lat, other.lon)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type_name, self.event, self.lat, self.lon))


# -- module helpers ---------------------------------------------------------------


def maybe_schedule(s: Any, relative: bool = False, app: Any = None, tz: TzLike = None) -> Any:
    """Turn a number of seconds or a timedelta into a :class:`schedule`; pass others through.

    If ``tz`` is given it is applied to schedules that have none.
    """
    if s is None:
        return None
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        s = timedelta(seconds=float(s))
    if isinstance(s, timedelta):
        return schedule(s, relative, tz=tz)
    if tz is not None and isinstance(s, BaseSchedule) and s.tz is None:
        s.tz = tz
    return s


def next_run_after(sched: Any, after: datetime) -> datetime:
    """First fire time of ``sched`` strictly after ``after`` (aware, UTC). Does not read the clock."""
    sched = maybe_schedule(sched)
    method = getattr(sched, "next_run_after", None)
    if method is None:
        raise TypeError(f"{sched!r} does not support next_run_after()")
    result: datetime = method(after)
    return result


def schedule_from_dict(d: dict[str, Any]) -> BaseSchedule:
    """Rebuild a schedule from :meth:`to_dict` output."""
    kinds: dict[str, type[BaseSchedule]] = {"schedule": schedule, "crontab": crontab, "solar": solar}
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in kinds:
        raise ImproperlyConfigured(f"Unknown schedule type {kind!r} in {d!r}")
    try:
        return kinds[kind](**{k: v for k, v in d.items() if k != "type"})
    except TypeError as exc:
        raise ImproperlyConfigured(f"Invalid {kind} description {d!r}: {exc}") from None
