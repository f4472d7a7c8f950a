"""Beat's tick arithmetic (celeriac.beat.ticks) against a controllable clock: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from celeriac.beat.entries import from_us, to_us
from celeriac.beat.ticks import SECOND, Step, first_run, latest_tick, next_after, plan, tick_task_id
from celeriac.schedules import crontab, schedule, solar

UTC = timezone.utc
MINUTE = 60 * SECOND


def us(*args: int) -> int:
    return to_us(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def brute_latest(sched, start: int, now: int) -> int:
    t = start
    while True:
        n = next_after(sched, t)
        if n > now:
            return t
        t = n


def test_microsecond_conversions_are_exact():
    dt = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    assert from_us(to_us(dt)) == dt
    assert to_us(datetime(1970, 1, 1)) == 0
    assert to_us(datetime(2024, 1, 1, 3, tzinfo=ZoneInfo("Europe/Moscow"))) == us(2024, 1, 1, 0)


def test_not_due_yet_plans_nothing():
    s = schedule(10)
    assert plan(s, us(2024, 1, 1, 0, 0, 10), us(2024, 1, 1, 0, 0, 9)).steps == ()


def test_on_time_tick_is_one_claim_that_advances_by_the_interval():
    s = schedule(10)
    t = us(2024, 1, 1, 0, 0, 10)
    p = plan(s, t, t + 1234)
    assert p.steps == (Step(t, t + 10 * SECOND, t),)
    assert p.policy is None


def test_ticks_late_within_the_catchup_window_are_each_sent_in_order():
    """A leader handover or quick restart: every due tick is sent, none coalesced."""
    s = schedule(1)
    t0 = us(2024, 1, 1, 12)
    p = plan(s, t0, t0 + 5 * SECOND + 300_000, "once", catchup=11 * SECOND)
    assert [st.tick for st in p.steps] == [t0 + i * SECOND for i in range(6)]
    assert all(st.new_next == st.expected + SECOND for st in p.steps)
    assert [st.expected for st in p.steps[1:]] == [st.new_next for st in p.steps[:-1]]
    assert p.policy is None


def test_policy_once_sends_the_latest_missed_tick_once_and_keeps_the_phase():
    s = schedule(30)
    t0 = us(2024, 1, 1, 0, 0, 0)
    now = t0 + 3600 * SECOND + 7 * SECOND  # down for an hour
    p = plan(s, t0, now, "once", catchup=11 * SECOND)
    assert p.policy == "once"
    [step] = p.steps
    assert step.expected == t0
    assert step.tick == t0 + 3600 * SECOND  # the last tick at or before now
    assert step.new_next == t0 + 3630 * SECOND  # first tick after now, same 30 s grid
    assert (p.missed_from, p.missed_to) == (t0, step.tick)


def test_policy_skip_advances_without_sending():
    s = schedule(30)
    t0 = us(2024, 1, 1)
    p = plan(s, t0, t0 + 3600 * SECOND + 1, "skip", catchup=11 * SECOND)
    assert p.steps == (Step(t0, t0 + 3630 * SECOND, None),)
    assert p.policy == "skip"


def test_policy_all_sends_every_missed_tick_a_batch_at_a_time():
    s = schedule(60)
    t0 = us(2024, 1, 1)
    now = t0 + 250 * MINUTE
    p = plan(s, t0, now, "all", catchup=11 * SECOND, limit=100)
    assert [st.tick for st in p.steps] == [t0 + i * MINUTE for i in range(100)]
    rest = plan(s, p.steps[-1].new_next, now, "all", catchup=11 * SECOND, limit=1000)
    assert len(rest.steps) == 151 and rest.steps[-1].tick == now
    assert p.policy == rest.policy == "all"


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="sometimes"):
        plan(schedule(1), 0, 10, "sometimes")


def test_first_run_is_the_first_tick_after_now():
    now = us(2024, 5, 1, 10, 0, 0) + 500
    assert first_run(schedule(5), now) == now + 5 * SECOND
    assert first_run(crontab(minute="*/15"), now) == us(2024, 5, 1, 10, 15)


def test_crontab_in_moscow_fires_at_six_utc():
    s = crontab(minute=0, hour=9, tz="Europe/Moscow")
    assert first_run(s, us(2024, 3, 1, 12)) == us(2024, 3, 2, 6, 0)


@pytest.mark.parametrize("sched", [
    crontab(minute="*/15"),
    crontab(minute=0, hour="9-17", day_of_week="mon-fri"),
    crontab(minute=30, hour=2, tz="Europe/Berlin"),      # 02:30 does not exist on the spring-forward day
    crontab(minute=30, hour=1, tz="America/New_York"),   # 01:30 happens twice on the fall-back day
    crontab(minute=0, hour=0, day_of_month=29, month_of_year=2),  # leap days only
    crontab(minute=0, hour=12, day_of_month=31),          # months with 31 days only
    schedule(timedelta(hours=1), relative=True),
    solar("sunrise", 55.75, 37.62),
])
@pytest.mark.parametrize("gap_days", [0.01, 1.3, 40.0])
def test_latest_tick_matches_walking_tick_by_tick(sched, gap_days):
    start = first_run(sched, us(2023, 10, 20))
    now = start + int(gap_days * 86400 * SECOND)
    assert latest_tick(sched, start, now) == brute_latest(sched, start, now)


def test_latest_tick_across_years_for_leap_days():
    s = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    start = first_run(s, us(2019, 1, 1))
    assert from_us(start) == datetime(2020, 2, 29, tzinfo=UTC)
    assert from_us(latest_tick(s, start, us(2027, 6, 1))) == datetime(2024, 2, 29, tzinfo=UTC)


def test_catch_up_over_a_dst_change_keeps_each_wall_clock_tick():
    berlin = crontab(minute=30, hour="1-3", tz="Europe/Berlin")
    start = first_run(berlin, us(2024, 3, 30, 23, 0))  # the night clocks go forward
    p = plan(berlin, start, us(2024, 3, 31, 2, 0), "once", catchup=4 * 3600 * SECOND)
    # 01:30 CET = 00:30 UTC; 02:30 does not exist and fires at 03:00 CEST = 01:00 UTC; 03:30 CEST = 01:30 UTC
    assert [from_us(st.tick or 0).strftime("%H:%M") for st in p.steps] == ["00:30", "01:00", "01:30"]


def test_tick_task_id_is_stable_and_distinct():
    a = tick_task_id("report", "proj.report", 1)
    assert a == tick_task_id("report", "proj.report", 1)
    assert len({a, tick_task_id("report", "proj.report", 2), tick_task_id("other", "proj.report", 1),
                tick_task_id("report", "proj.other", 1)}) == 4
