"""Tests for celeriac.schedules: interval, crontab and solar schedules."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    next_run_after,
    schedstate,
    schedule,
    schedule_from_dict,
    solar,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MOSCOW = ZoneInfo("Europe/Moscow")
LONDON = ZoneInfo("Europe/London")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def fires(sched, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = next_run_after(sched, t)
        out.append(t)
    return out


def clock(at: datetime):
    return lambda: at


# -- interval schedules -------------------------------------------------------


class TestSchedule:
    def test_number_and_timedelta(self):
        assert schedule(30).run_every == timedelta(seconds=30)
        assert schedule(timedelta(minutes=2)).seconds == 120
        assert schedule(1.5).run_every == timedelta(seconds=1.5)

    @pytest.mark.parametrize("bad", [0, -5, timedelta(0), "10", None, True])
    def test_invalid_run_every(self, bad):
        with pytest.raises(ImproperlyConfigured, match="run_every"):
            schedule(bad)

    def test_next_run_after_is_after_plus_interval(self):
        assert next_run_after(schedule(10), utc(2024, 1, 1, 12, 0, 0)) == utc(2024, 1, 1, 12, 0, 10)
        # naive input is UTC, output is aware UTC
        got = next_run_after(schedule(60), datetime(2024, 1, 1, 12, 0, 30))
        assert got == utc(2024, 1, 1, 12, 1, 30) and got.tzinfo is UTC

    def test_interval_is_absolute_across_dst(self):
        s = schedule(timedelta(hours=1), tz=BERLIN)
        start = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)  # 00:30 UTC, just before the gap
        assert next_run_after(s, start) == utc(2024, 3, 31, 1, 30)

    def test_is_due_not_yet(self):
        s = schedule(10, nowfun=clock(utc(2024, 1, 1, 12, 0, 4)))
        assert s.is_due(utc(2024, 1, 1, 12, 0, 0)) == schedstate(False, 6.0)
        assert s.remaining_estimate(utc(2024, 1, 1, 12, 0, 0)) == timedelta(seconds=6)

    def test_is_due_now_returns_interval(self):
        s = schedule(10, nowfun=clock(utc(2024, 1, 1, 12, 0, 10)))
        due, nxt = s.is_due(utc(2024, 1, 1, 12, 0, 0))
        assert due is True and nxt == 10.0
        assert s.is_due(utc(2024, 1, 1, 11, 0, 0)) == (True, 10.0)  # long overdue

    def test_is_due_accepts_naive_and_local(self):
        s = schedule(60, nowfun=lambda: datetime(2024, 1, 1, 12, 0, 30))  # naive clock = UTC
        assert s.is_due(datetime(2024, 1, 1, 13, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))) == (False, 30.0)

    def test_relative_rounds_to_resolution(self):
        s = schedule(timedelta(hours=1), relative=True)
        assert next_run_after(s, utc(2024, 1, 1, 10, 17, 42)) == utc(2024, 1, 1, 11, 0)
        assert fires(s, utc(2024, 1, 1, 10, 17), 3) == [utc(2024, 1, 1, h) for h in (11, 12, 13)]
        minutes = schedule(timedelta(minutes=5), relative=True)
        assert next_run_after(minutes, utc(2024, 1, 1, 10, 17, 42)) == utc(2024, 1, 1, 10, 22)
        seconds = schedule(10, relative=True)
        assert next_run_after(seconds, utc(2024, 1, 1, 10, 0, 0, 500)) == utc(2024, 1, 1, 10, 0, 10)

    def test_relative_daily_uses_local_midnight(self):
        s = schedule(timedelta(days=1), relative=True, tz=MOSCOW)
        # 2024-01-01 10:00 Moscow -> next local midnight after one day: 2024-01-02 00:00 MSK
        assert next_run_after(s, utc(2024, 1, 1, 7)) == utc(2024, 1, 1, 21)

    def test_relative_is_due(self):
        s = schedule(timedelta(hours=1), relative=True, nowfun=clock(utc(2024, 1, 1, 10, 45)))
        assert s.is_due(utc(2024, 1, 1, 10, 5)) == (False, 15 * 60.0)
        s.nowfun = clock(utc(2024, 1, 1, 11, 0, 1))
        assert s.is_due(utc(2024, 1, 1, 10, 5)) == (True, 3600.0)

    def test_repr_and_human_seconds(self):
        assert repr(schedule(10)) == "<freq: 10.00 seconds>"
        assert repr(schedule(60)) == "<freq: 1.00 minute>"
        assert repr(schedule(timedelta(days=2))) == "<freq: 2.00 days>"

    def test_equality(self):
        assert schedule(60) == schedule(timedelta(minutes=1))
        assert schedule(60) != schedule(61)
        assert schedule(60) != schedule(60, relative=True)
        assert schedule(60, tz="UTC") == schedule(60)
        assert len({schedule(60), schedule(timedelta(seconds=60))}) == 1

    def test_maybe_schedule(self):
        assert maybe_schedule(10) == schedule(10)
        assert maybe_schedule(timedelta(seconds=5), relative=True) == schedule(5, relative=True)
        c = crontab()
        assert maybe_schedule(c) is c
        assert maybe_schedule(None) is None
        assert maybe_schedule(60, tz=MOSCOW).tz is MOSCOW
        assert next_run_after(30, utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 0, 30)


# -- crontab: fields ------------------------------------------------------------


class TestCrontabFields:
    def test_defaults(self):
        c = crontab()
        assert c.minute == set(range(60)) and c.hour == set(range(24))
        assert c.day_of_week == set(range(7)) and c.day_of_month == set(range(1, 32))
        assert c.month_of_year == set(range(1, 13))

    @pytest.mark.parametrize(
        "kwargs, field, expected",
        [
            ({"minute": "*/15"}, "minute", {0, 15, 30, 45}),
            ({"minute": "1,13,30-45/5,50"}, "minute", {1, 13, 30, 35, 40, 45, 50}),
            ({"minute": "1-30/5"}, "minute", {1, 6, 11, 16, 21, 26}),
            ({"minute": "50/5"}, "minute", {50, 55}),
            ({"minute": 7}, "minute", {7}),
            ({"minute": [0, 30]}, "minute", {0, 30}),
            ({"minute": {5, 10}}, "minute", {5, 10}),
            ({"hour": "0,8-17/2"}, "hour", {0, 8, 10, 12, 14, 16}),
            ({"hour": "22-2"}, "hour", {22, 23, 0, 1, 2}),
            ({"hour": range(3)}, "hour", {0, 1, 2}),
            ({"day_of_week": "mon"}, "day_of_week", {1}),
            ({"day_of_week": "SUN"}, "day_of_week", {0}),
            ({"day_of_week": "tue-fri"}, "day_of_week", {2, 3, 4, 5}),
            ({"day_of_week": "fri-mon"}, "day_of_week", {5, 6, 0, 1}),
            ({"day_of_week": "mon-sun"}, "day_of_week", set(range(7))),
            ({"day_of_week": "Monday,wednesday"}, "day_of_week", {1, 3}),
            ({"day_of_week": ["sat", "sun"]}, "day_of_week", {6, 0}),
            ({"day_of_week": "*/2"}, "day_of_week", {0, 2, 4, 6}),
            ({"day_of_month": "1-7,15-21"}, "day_of_month", set(range(1, 8)) | set(range(15, 22))),
            ({"day_of_month": "*/10"}, "day_of_month", {1, 11, 21, 31}),
            ({"month_of_year": "jan,Jul"}, "month_of_year", {1, 7}),
            ({"month_of_year": "*/3"}, "month_of_year", {1, 4, 7, 10}),
            ({"month_of_year": "nov-feb"}, "month_of_year", {11, 12, 1, 2}),
        ],
    )
    def test_parsing(self, kwargs, field, expected):
        assert getattr(crontab(**kwargs), field) == expected

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"minute": 61}, r"Invalid crontab field minute='61': 61 is out of range 0-59"),
            ({"minute": "*/0"}, r"minute='\*/0': step '0' is not a positive integer"),
            ({"minute": "1,,2"}, r"minute='1,,2': empty list element"),
            ({"minute": "-5"}, r"minute='-5'.*negative"),
            ({"minute": "abc"}, r"minute='abc': 'abc' is not a number"),
            ({"hour": 24}, r"hour='24': 24 is out of range 0-23"),
            ({"hour": "1-25"}, r"hour='1-25': 25 is out of range 0-23"),
            ({"day_of_week": "funday"}, r"day_of_week='funday'.*'funday' is not a number or day name"),
            ({"day_of_week": 7}, r"day_of_week='7': 7 is out of range 0-6"),
            ({"day_of_week": "jan"}, r"day_of_week='jan'"),
            ({"day_of_month": 0}, r"day_of_month='0': 0 is out of range 1-31"),
            ({"day_of_month": "32"}, r"day_of_month='32': 32 is out of range 1-31"),
            ({"month_of_year": 13}, r"month_of_year='13': 13 is out of range 1-12"),
            ({"month_of_year": "smarch"}, r"month_of_year='smarch'.*month name"),
            ({"minute": [1, 99]}, r"minute='1,99': 99 is out of range 0-59"),
            ({"minute": []}, r"minute=\[\]"),
            ({"minute": 1.5}, r"minute=1.5"),
            ({"minute": True}, r"minute=True"),
        ],
    )
    def test_invalid(self, kwargs, message):
        with pytest.raises(ParseException, match=message):
            crontab(**kwargs)

    def test_parse_exception_is_improperly_configured(self):
        assert issubclass(ParseException, ImproperlyConfigured)
        assert issubclass(ParseException, ValueError)

    def test_impossible_date(self):
        with pytest.raises(ImproperlyConfigured, match="never occurs"):
            crontab(day_of_month=30, month_of_year=2)

    def test_crontab_parser(self):
        assert crontab_parser(60).parse("*/20") == {0, 20, 40}
        assert crontab_parser(31, 1).parse("*/15") == {1, 16, 31}
        with pytest.raises(ParseException, match="out of range 0-23"):
            crontab_parser(24).parse("24")

    def test_from_string(self):
        c = crontab.from_string("*/15 9-17 1 jan mon-fri")
        assert c == crontab("*/15", "9-17", day_of_week="mon-fri", day_of_month=1, month_of_year="jan")
        with pytest.raises(ParseException, match="expected 5 fields"):
            crontab.from_string("* * *")

    def test_repr(self):
        assert repr(crontab(minute="*/15")) == "<crontab: */15 * * * * (m/h/dM/MY/d)>"
        assert repr(crontab(0, 9, "mon", 1, "jan")) == "<crontab: 0 9 1 jan mon (m/h/dM/MY/d)>"
        assert repr(crontab(minute={30, 0})) == "<crontab: 0,30 * * * * (m/h/dM/MY/d)>"

    def test_equality(self):
        assert crontab(minute="*/15") == crontab(minute=[0, 15, 30, 45])
        assert crontab(day_of_week="mon-fri") == crontab(day_of_week="1-5")
        assert crontab(minute=0) != crontab(minute=1)
        assert crontab(minute=0, tz=MOSCOW) != crontab(minute=0)
        assert crontab(minute=0, tz="Europe/Moscow") == crontab(minute=0, tz=MOSCOW)
        assert hash(crontab(minute="*/30")) == hash(crontab(minute="0,30"))
        assert crontab() != schedule(60)


# -- crontab: next run ---------------------------------------------------------------


class TestCrontabNextRun:
    def test_every_minute(self):
        assert next_run_after(crontab(), utc(2024, 1, 1, 10, 0, 30)) == utc(2024, 1, 1, 10, 1)
        assert next_run_after(crontab(), utc(2024, 1, 1, 10, 0)) == utc(2024, 1, 1, 10, 1)
        assert next_run_after(crontab(), utc(2024, 12, 31, 23, 59, 59)) == utc(2025, 1, 1, 0, 0)

    def test_every_quarter_hour(self):
        got = fires(crontab(minute="*/15"), utc(2024, 1, 1, 10, 7), 4)
        assert got == [
            utc(2024, 1, 1, 10, 15),
            utc(2024, 1, 1, 10, 30),
            utc(2024, 1, 1, 10, 45),
            utc(2024, 1, 1, 11),
        ]

    def test_list_and_range(self):
        c = crontab(minute="0,30", hour="9-10")
        got = fires(c, utc(2024, 1, 1, 8), 5)
        assert got == [utc(2024, 1, 1, 9), utc(2024, 1, 1, 9, 30), utc(2024, 1, 1, 10), utc(2024, 1, 1, 10, 30),
                       utc(2024, 1, 2, 9)]  # fmt: skip

    def test_step_on_range(self):
        c = crontab(minute=0, hour="8-17/3")
        assert fires(c, utc(2024, 1, 1), 5) == [utc(2024, 1, 1, h) for h in (8, 11, 14, 17)] + [
            utc(2024, 1, 2, 8)
        ]

    def test_weekday_names(self):
        c = crontab(minute=0, hour=7, day_of_week="mon-fri")
        # 2024-01-05 is a Friday
        assert fires(c, utc(2024, 1, 5, 8), 2) == [utc(2024, 1, 8, 7), utc(2024, 1, 9, 7)]
        sunday = crontab(minute=0, hour=0, day_of_week="sun")
        assert next_run_after(sunday, utc(2024, 1, 1)) == utc(2024, 1, 7)
        assert next_run_after(crontab(0, 0, day_of_week=0), utc(2024, 1, 1)) == utc(2024, 1, 7)

    def test_month_names(self):
        c = crontab(0, 0, day_of_month=1, month_of_year="jan,jul")
        assert fires(c, utc(2024, 1, 1), 2) == [utc(2024, 7, 1), utc(2025, 1, 1)]

    def test_day_31_skips_short_months(self):
        c = crontab(0, 0, day_of_month=31)
        assert fires(c, utc(2024, 3, 31, 1), 3) == [utc(2024, 5, 31), utc(2024, 7, 31), utc(2024, 8, 31)]

    def test_feb_29_only_on_leap_years(self):
        c = crontab(0, 12, day_of_month=29, month_of_year=2)
        assert fires(c, utc(2024, 3, 1), 2) == [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)]
        assert next_run_after(c, utc(2099, 3, 1)) == utc(2104, 2, 29, 12)  # 2100 is not a leap year

    def test_day_of_month_and_day_of_week_must_both_match(self):
        friday_13th = crontab(0, 0, day_of_week="fri", day_of_month=13)
        assert fires(friday_13th, utc(2024, 1, 1), 3) == [
            utc(2024, 9, 13),
            utc(2024, 12, 13),
            utc(2025, 6, 13),
        ]
        first_monday = crontab(0, 9, day_of_week="mon", day_of_month="1-7")
        assert fires(first_monday, utc(2024, 1, 1, 10), 2) == [utc(2024, 2, 5, 9), utc(2024, 3, 4, 9)]

    def test_moscow_nine_is_six_utc(self):
        c = crontab(minute=0, hour=9, tz=ZoneInfo("Europe/Moscow"))
        assert fires(c, utc(2024, 5, 1), 2) == [utc(2024, 5, 1, 6), utc(2024, 5, 2, 6)]
        assert next_run_after(c, utc(2024, 5, 1, 6)) == utc(2024, 5, 2, 6)

    def test_tz_attribute_and_name(self):
        c = crontab(minute=0, hour=9)
        c.tz = "Europe/Moscow"
        assert c.tz == MOSCOW
        assert next_run_after(c, utc(2024, 5, 1)) == utc(2024, 5, 1, 6)
        with pytest.raises(ImproperlyConfigured, match="Unknown time zone"):
            crontab(tz="Mars/Olympus_Mons")

    def test_fixed_offset_tz(self):
        c = crontab(0, 9, tz=timezone(timedelta(hours=5, minutes=30)))
        assert next_run_after(c, utc(2024, 1, 1)) == utc(2024, 1, 1, 3, 30)

    def test_result_is_aware_utc(self):
        got = next_run_after(crontab(0, 9, tz=BERLIN), datetime(2024, 1, 1))
        assert got.tzinfo is UTC and got == utc(2024, 1, 1, 8)

    def test_local_input(self):
        c = crontab(0, 9, tz=BERLIN)
        assert next_run_after(c, datetime(2024, 1, 1, 9, 0, tzinfo=BERLIN)) == utc(2024, 1, 2, 8)
        assert next_run_after(c, datetime(2024, 1, 1, 8, 59, tzinfo=BERLIN)) == utc(2024, 1, 1, 8)


# -- crontab: daylight saving ----------------------------------------------------------


class TestCrontabDst:
    def test_berlin_spring_forward_missing_time_fires_once_after_gap(self):
        # 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
        c = crontab(minute=30, hour=2, tz=BERLIN)
        got = fires(c, utc(2024, 3, 30, 12), 3)
        assert got == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30), utc(2024, 4, 2, 0, 30)]

    def test_berlin_spring_forward_every_quarter_no_duplicates(self):
        c = crontab(minute="*/15", tz=BERLIN)
        got = fires(c, utc(2024, 3, 31, 0, 30), 4)
        # 01:45 CET, then 02:00-02:45 collapse onto 03:00 CEST, then 03:15 CEST
        assert got == [
            utc(2024, 3, 31, 0, 45),
            utc(2024, 3, 31, 1),
            utc(2024, 3, 31, 1, 15),
            utc(2024, 3, 31, 1, 30),
        ]

    def test_berlin_fall_back_repeated_time_fires_first_occurrence_only(self):
        # 2024-10-27: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice.
        c = crontab(minute=30, hour=2, tz=BERLIN)
        got = fires(c, utc(2024, 10, 26, 12), 3)
        assert got == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30), utc(2024, 10, 29, 1, 30)]
        # asking during the second 02:30 (CET) does not fire again that day
        second = datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=1)
        assert second.astimezone(UTC) == utc(2024, 10, 27, 1, 30)
        assert next_run_after(c, second) == utc(2024, 10, 28, 1, 30)

    def test_berlin_fall_back_half_hourly(self):
        c = crontab(minute="0,30", tz=BERLIN)
        got = fires(c, utc(2024, 10, 26, 23, 45), 4)
        # 02:00, 02:30 CEST; the repeated 02:00/02:30 CET are skipped; then 03:00 CET
        assert got == [
            utc(2024, 10, 27, 0),
            utc(2024, 10, 27, 0, 30),
            utc(2024, 10, 27, 2),
            utc(2024, 10, 27, 2, 30),
        ]
        assert next_run_after(c, utc(2024, 10, 27, 1, 10)) == utc(2024, 10, 27, 2)

    def test_new_york_spring_forward(self):
        # 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        hourly_half_past = crontab(minute=30, tz=NEW_YORK)
        got = fires(hourly_half_past, utc(2024, 3, 10, 6), 3)
        assert got == [utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 30)]
        daily = crontab(minute=15, hour=2, tz=NEW_YORK)
        assert fires(daily, utc(2024, 3, 9, 12), 2) == [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 15)]

    def test_new_york_fall_back(self):
        # 2024-11-03: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:30 happens twice.
        c = crontab(minute=30, hour=1, tz=NEW_YORK)
        got = fires(c, utc(2024, 11, 2, 12), 2)
        assert got == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]

    def test_daily_nine_stays_local_across_dst(self):
        c = crontab(0, 9, tz=BERLIN)
        assert next_run_after(c, utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 7)
        assert next_run_after(c, utc(2024, 3, 29, 12)) == utc(2024, 3, 30, 8)

    def test_crontab_is_due(self):
        c = crontab(minute="*/15", nowfun=clock(utc(2024, 1, 1, 10, 10)))
        assert c.is_due(utc(2024, 1, 1, 10, 0)) == (False, 300.0)
        assert c.remaining_estimate(utc(2024, 1, 1, 10, 0)) == timedelta(minutes=5)
        c.nowfun = clock(utc(2024, 1, 1, 10, 15, 1))
        assert c.is_due(utc(2024, 1, 1, 10, 0)) == (True, 14 * 60 + 59.0)
        assert c.is_due(utc(2024, 1, 1, 10, 15)) == (False, 14 * 60 + 59.0)


# -- solar ---------------------------------------------------------------------------


def _close(actual: datetime, expected: datetime, minutes: float = 2) -> bool:
    return abs(actual - expected) <= timedelta(minutes=minutes)


class TestSolar:
    def test_london_sunrise_midsummer(self):
        s = solar("sunrise", 51.5074, -0.1278)
        got = next_run_after(s, datetime(2024, 6, 21, 0, 0, tzinfo=LONDON))
        assert _close(got, datetime(2024, 6, 21, 4, 43, tzinfo=LONDON))

    @pytest.mark.parametrize(
        "event, expected",
        [
            ("sunset", datetime(2024, 6, 21, 21, 21, tzinfo=LONDON)),
            ("solar_noon", datetime(2024, 6, 21, 13, 2, tzinfo=LONDON)),
            ("dawn_civil", datetime(2024, 6, 21, 3, 56, tzinfo=LONDON)),
            ("dusk_civil", datetime(2024, 6, 21, 22, 9, tzinfo=LONDON)),
        ],
    )
    def test_london_events(self, event, expected):
        got = next_run_after(solar(event, 51.5074, -0.1278), datetime(2024, 6, 21, 0, 0, tzinfo=LONDON))
        assert _close(got, expected)

    def test_new_york_winter_and_sydney(self):
        ny = next_run_after(solar("sunset", 40.7128, -74.006), utc(2024, 1, 1, 12))
        assert _close(ny, datetime(2024, 1, 1, 16, 39, tzinfo=NEW_YORK))
        sydney = next_run_after(solar("sunrise", -33.8688, 151.2093), utc(2024, 12, 20, 12))
        assert _close(sydney, datetime(2024, 12, 21, 5, 41, tzinfo=ZoneInfo("Australia/Sydney")))

    def test_strictly_after_and_deterministic(self):
        s = solar("sunrise", 51.5074, -0.1278)
        first = next_run_after(s, utc(2024, 6, 21))
        assert next_run_after(s, first - timedelta(seconds=1)) == first
        second = next_run_after(s, first)
        assert timedelta(hours=23, minutes=58) < second - first < timedelta(hours=24, minutes=2)

    def test_polar_night_skips_to_next_sunrise(self):
        tromso = solar("sunrise", 69.65, 18.96)
        got = next_run_after(tromso, utc(2024, 12, 1))
        assert utc(2025, 1, 10) < got < utc(2025, 1, 20)

    def test_midnight_sun_skips_to_next_sunset(self):
        got = next_run_after(solar("sunset", 69.65, 18.96), utc(2024, 6, 21))
        assert utc(2024, 7, 20) < got < utc(2024, 8, 1)

    def test_london_no_astronomical_dusk_at_midsummer(self):
        got = next_run_after(solar("dusk_astronomical", 51.5074, -0.1278), utc(2024, 6, 21))
        assert got > utc(2024, 7, 10)

    def test_is_due(self):
        s = solar("sunrise", 51.5074, -0.1278, nowfun=clock(utc(2024, 6, 21, 1)))
        due, nxt = s.is_due(utc(2024, 6, 20, 12))
        assert due is False and 2 * 3600 < nxt < 3 * 3600
        s.nowfun = clock(utc(2024, 6, 21, 4))
        due, nxt = s.is_due(utc(2024, 6, 20, 12))
        assert due is True and 23 * 3600 < nxt < 24 * 3600

    @pytest.mark.parametrize(
        "args, exc, message",
        [
            (("sunup", 0, 0), ValueError, "'sunup'"),
            (("sunrise", 91, 0), ValueError, "latitude: 91"),
            (("sunrise", -90.5, 0), ValueError, "latitude"),
            (("sunrise", 0, 181), ValueError, "longitude: 181"),
            (("sunrise", 0, -180.1), ImproperlyConfigured, "longitude"),
        ],
    )
    def test_invalid(self, args, exc, message):
        with pytest.raises(exc, match=message):
            solar(*args)

    def test_repr_and_eq(self):
        s = solar("sunset", 51.5, -0.12)
        assert repr(s) == "<solar: sunset at latitude 51.5, longitude: -0.12>"
        assert s == solar("sunset", 51.5, -0.12) and s != solar("sunrise", 51.5, -0.12)


# -- persistence -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sched",
    [
        schedule(30),
        schedule(timedelta(minutes=90), relative=True, tz=BERLIN),
        schedule(0.25),
        crontab(),
        crontab(minute="*/15", hour="9-17", day_of_week="mon-fri", tz=MOSCOW),
        crontab(minute=[0, 30], hour=5, day_of_month=13, month_of_year="jan,dec", day_of_week="fri"),
        crontab(0, 9, tz=timezone(timedelta(hours=-3, minutes=-30))),
        solar("dusk_civil", 59.33, 18.07),
    ],
    ids=repr,
)
def test_round_trip(sched):
    d = sched.to_dict()
    assert json.loads(json.dumps(d)) == d
    rebuilt = schedule_from_dict(json.loads(json.dumps(d)))
    assert rebuilt == sched and type(rebuilt) is type(sched)
    assert repr(rebuilt) == repr(sched)
    assert next_run_after(rebuilt, utc(2024, 3, 5, 10, 7)) == next_run_after(sched, utc(2024, 3, 5, 10, 7))
    assert pickle.loads(pickle.dumps(sched)) == sched


def test_schedule_from_dict_unknown_type():
    with pytest.raises(ImproperlyConfigured, match="Unknown schedule type"):
        schedule_from_dict({"type": "lunar"})


def test_next_run_after_rejects_unknown_objects():
    with pytest.raises(TypeError):
        next_run_after(object(), utc(2024, 1, 1))


def test_schedule_from_dict_validates_fields():
    with pytest.raises(ParseException, match="minute='99'"):
        schedule_from_dict({"type": "crontab", "minute": "99"})
    with pytest.raises(ImproperlyConfigured, match="Invalid solar description"):
        schedule_from_dict({"type": "solar", "event": "sunrise"})
    assert schedule_from_dict({"type": "crontab", "hour": 9, "tz": "Europe/Moscow"}) == crontab(
        hour=9, tz=MOSCOW
    )
