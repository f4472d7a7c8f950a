"""Sun event times for :class:`celeriac.schedules.solar`.

The arithmetic is the low-precision solar position model published by NOAA's
Global Monitoring Laboratory (after Meeus, *Astronomical Algorithms*): the
sun's declination and the equation of time are evaluated for a Julian
century, and an event is the moment the centre of the sun crosses a given
altitude.  The result is usually within a minute of published tables for
latitudes below the polar circles.

Every event belongs to a *UTC calendar day*: the crossing nearest to that
day's solar noon.  Times are computed from the day alone (never from the
instant a caller asks about), and rounded to whole seconds, so asking twice
gives the same answer.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

__all__ = ["EVENTS", "event_on", "next_event"]

#: event name -> (which crossing, altitude of the sun's centre in degrees).
#: Sunrise and sunset use -0.833 degrees: the upper limb touches the horizon,
#: allowing 34' of refraction and 16' of solar semi-diameter.
EVENTS: dict[str, tuple[str, float]] = {
    "dawn_astronomical": ("rise", -18.0),
    "dawn_nautical": ("rise", -12.0),
    "dawn_civil": ("rise", -6.0),
    "sunrise": ("rise", -0.833),
    "solar_noon": ("noon", 0.0),
    "sunset": ("set", -0.833),
    "dusk_civil": ("set", -6.0),
    "dusk_nautical": ("set", -12.0),
    "dusk_astronomical": ("set", -18.0),
}

_JD_UNIX_EPOCH = 2440587.5  # Julian date of 1970-01-01T00:00Z
_JD_J2000 = 2451545.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SEARCH_DAYS = 800  # more than two years: every event recurs at least yearly


def _sun_state(jd: float) -> tuple[float, float]:
    """Return (declination in radians, equation of time in minutes) at ``jd``."""
    t = (jd - _JD_J2000) / 36525.0  # Julian centuries since J2000.0
    mean_long = math.radians((280.46646 + t * (36000.76983 + 0.0003032 * t)) % 360.0)
    mean_anom = math.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    centre = (
        math.sin(mean_anom) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * mean_anom) * (0.019993 - 0.000101 * t)
        + math.sin(3 * mean_anom) * 0.000289
    )
    omega = math.radians(125.04 - 1934.136 * t)
    true_long = math.degrees(mean_long) + centre
    apparent_long = math.radians(true_long - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(omega))

    declination = math.asin(math.sin(obliquity) * math.sin(apparent_long))
    y = math.tan(obliquity / 2) ** 2
    eq_time = 4.0 * math.degrees(
        y * math.sin(2 * mean_long)
        - 2 * ecc * math.sin(mean_anom)
        + 4 * ecc * y * math.sin(mean_anom) * math.cos(2 * mean_long)
        - 0.5 * y * y * math.sin(4 * mean_long)
        - 1.25 * ecc * ecc * math.sin(2 * mean_anom)
    )
    return declination, eq_time


def event_on(event: str, lat: float, lon: float, day: date) -> datetime | None:
    """Return the UTC time of ``event`` belonging to UTC ``day``, or None.

    None means the sun does not reach the event's altitude that day (polar
    day or polar night).  Longitude is positive east.
    """
    kind, altitude = EVENTS[event]
    midnight_jd = (day.toordinal() - date(1970, 1, 1).toordinal()) + _JD_UNIX_EPOCH
    phi = math.radians(lat)
    sin_alt = math.sin(math.radians(altitude))
    minutes = 720.0 - 4.0 * lon  # first guess: mean solar noon, minutes after 00:00 UTC
    for _ in range(3):  # refine: evaluate the sun at the previous estimate
        declination, eq_time = _sun_state(midnight_jd + minutes / 1440.0)
        noon = 720.0 - 4.0 * lon - eq_time
        if kind == "noon":
            minutes = noon
            continue
        cos_h = (sin_alt - math.sin(phi) * math.sin(declination)) / (math.cos(phi) * math.cos(declination))
        if not -1.0 <= cos_h <= 1.0:
            return None
        hour_angle = math.degrees(math.acos(cos_h))
        minutes = noon - 4.0 * hour_angle if kind == "rise" else noon + 4.0 * hour_angle
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start + timedelta(seconds=round(minutes * 60.0))


def next_event(event: str, lat: float, lon: float, after: datetime) -> datetime:
    """Return the first time of ``event`` strictly after the aware datetime ``after`` (UTC)."""
    after = after.astimezone(timezone.utc)
    # An event of UTC day d falls within roughly d-12h .. d+36h, so start two days early.
    day = after.date() - timedelta(days=2)
    for _ in range(_SEARCH_DAYS):
        when = event_on(event, lat, lon, day)
        if when is not None and when > after:
            return when
        day += timedelta(days=1)
    raise ValueError(f"solar event {event!r} does not occur at latitude {lat}, longitude {lon}")
