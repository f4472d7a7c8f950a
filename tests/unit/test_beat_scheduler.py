"""The beat scheduler driven by a controllable clock, on a real SQLite broker file per test.

The clock is the scheduler's injectable ``clock``; everything else is real: the
store's tables, the compare-and-set claims, the lease and the messages sent to
the broker (read back with ``broker.fetch``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.beat import EmbeddedBeat, ScheduleEntryError, Scheduler, ScheduleStore, resolve_scheduler
from celeriac.beat.entries import to_us
from celeriac.beat.ticks import SECOND, tick_task_id
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.message import decode_task_message
from celeriac.schedules import ParseException, crontab

UTC = timezone.utc
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def us(t: float) -> int:
    return int(t * SECOND)


@pytest.fixture
def make_app(tmp_path: Path):
    apps: list[Celery] = []

    def factory(beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
        app = Celery("proj", broker=f"sqlite:///{tmp_path}/broker.db", set_as_current=False)
        app.conf.beat_schedule = beat_schedule or {}
        app.conf.update(conf)

        @app.task(name="proj.t")
        def t(*args: Any, **kwargs: Any) -> None:
            pass

        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def schedulers():
    made: list[Scheduler] = []

    def factory(app: Celery, clock: Clock, owner: str, **kw: Any) -> Scheduler:
        s = Scheduler(app, clock=clock, owner=owner, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.store.close()


def sent(app: Celery, queue: str = "celery") -> list[Any]:
    """Take every message beat sent to ``queue`` (envelopes, in order)."""
    out = []
    while True:
        batch = app.broker.fetch([queue], 1000, 0.01, "test-reader")
        if not batch:
            return out
        app.broker.ack(batch)
        out += [d.envelope for d in batch]


def ids(app: Celery, queue: str = "celery") -> list[str]:
    return [e.headers["id"] for e in sent(app, queue)]


def tid(name: str, t: float, task: str = "proj.t") -> str:
    return tick_task_id(name, task, us(t))


EVERY_SECOND = {"sec": {"task": "proj.t", "schedule": 1.0}}


def run(s: Scheduler, clock: Clock, until: float, step: float = 0.25) -> None:
    while clock.t < until:
        clock.t = round(clock.t + step, 6)
        s.tick()


# -- sending --------------------------------------------------------------------


def test_interval_entry_is_sent_at_each_tick_with_its_arguments(make_app, schedulers):
    app = make_app({"every-2": {"task": "proj.t", "schedule": 2.0, "args": (1, "a"), "kwargs": {"k": 2}}})
    clock = Clock()
    s = schedulers(app, clock, "A")
    [entry] = s.setup()
    assert entry.next_run == us(T0 + 2)
    assert s.tick() > 0 and s.is_leader
    assert sent(app) == []
    clock.t = T0 + 2
    s.tick()
    [env] = sent(app)
    assert env.headers["task"] == "proj.t" and env.headers["id"] == tid("every-2", T0 + 2)
    assert app.broker.fetch  # the message is a normal task message
    clock.t = T0 + 3.9
    s.tick()
    assert sent(app) == []
    clock.t = T0 + 4.0
    s.tick()
    assert ids(app) == [tid("every-2", T0 + 4)]
    row = ScheduleStore(app, s.store).get("every-2")
    assert row is not None and (row.total_run_count, row.last_run, row.next_run) == (2, us(T0 + 4), us(T0 + 6))


def test_tick_returns_the_time_until_the_next_tick_or_lease_renewal(make_app, schedulers):
    app = make_app({"e": {"task": "proj.t", "schedule": 10.0}}, beat_lease_seconds=6.0)
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    assert s.tick() == pytest.approx(1.0)  # renew every min(1, lease / 3) s
    clock.t = T0 + 9.5
    assert s.tick() == pytest.approx(0.5)


def test_send_options_queue_priority_expires(make_app, schedulers):
    app = make_app({"r": {"task": "proj.report", "schedule": timedelta(seconds=5),
                          "options": {"queue": "reports", "priority": 7, "expires": 30}}})
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    clock.t = T0 + 5
    s.tick()
    [env] = sent(app, "reports")
    assert env.priority == 7
    expires = datetime.fromisoformat(env.headers["expires"])
    assert timedelta(seconds=25) < expires - datetime.now(UTC) <= timedelta(seconds=30)


def test_unregistered_task_warns_at_start_and_is_sent_anyway(make_app, schedulers, caplog):
    app = make_app({"ghost": {"task": "elsewhere.ghost", "schedule": 1.0}})
    clock = Clock()
    s = schedulers(app, clock, "A")
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        s.setup()
    assert "'ghost' names task 'elsewhere.ghost', which is not registered" in caplog.text
    clock.t = T0 + 1
    s.tick()
    [env] = sent(app)
    assert env.headers["task"] == "elsewhere.ghost"


def test_sending_logs_like_celery(make_app, schedulers, caplog):
    app = make_app(EVERY_SECOND)
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        run(s, clock, T0 + 1)
    assert "Scheduler: Sending due task sec (proj.t)" in caplog.text


# -- restarts and missed ticks ----------------------------------------------------


def test_restart_neither_repeats_nor_skips_a_tick(make_app, schedulers):
    app = make_app(EVERY_SECOND)
    clock = Clock()
    a = schedulers(app, clock, "A")
    a.setup()
    run(a, clock, T0 + 3)
    a.close()
    # down for 2.5 s (less than the catch-up window): the restarted beat sends ticks 4 and 5, late
    clock.t = T0 + 5.5
    app2 = make_app(EVERY_SECOND)
    b = schedulers(app2, clock, "B")
    b.setup()
    b.tick()
    run(b, clock, T0 + 7)
    assert ids(app) == [tid("sec", T0 + i) for i in range(1, 8)]


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_missed_ticks_policy_after_a_long_downtime(make_app, schedulers, policy, caplog):
    app = make_app({"ten": {"task": "proj.t", "schedule": 10.0}}, beat_missed_ticks=policy)
    clock = Clock()
    a = schedulers(app, clock, "A")
    a.setup()
    run(a, clock, T0 + 10, step=10)
    assert ids(app) == [tid("ten", T0 + 10)]
    a.close()
    clock.t = T0 + 3605  # an hour later
    b = schedulers(app, clock, "B")
    b.setup()
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        while b.tick() == 0.0:
            pass
    got = ids(app)
    if policy == "once":
        assert got == [tid("ten", T0 + 3600)]  # one, late, for the latest missed tick
        assert "missed its ticks" in caplog.text and "once, late" in caplog.text
    elif policy == "skip":
        assert got == []
        assert "skipped the ticks of ten" in caplog.text
    else:
        assert got == [tid("ten", T0 + 10 * i) for i in range(2, 361)]
    entry = b.store.get("ten")
    assert entry is not None and entry.next_run == us(T0 + 3610)  # same 10 s grid, after now
    run(b, clock, T0 + 3610, step=5)
    assert ids(app) == [tid("ten", T0 + 3610)]


def test_default_policy_is_once(make_app, schedulers):
    app = make_app(EVERY_SECOND)
    s = schedulers(app, Clock(), "A")
    assert (s.policy, s.lease_seconds, s.catchup_seconds, s.takeover_bound) == ("once", 5.0, 11.0, 6.0)
    with pytest.raises(ImproperlyConfigured, match="beat_missed_ticks"):
        Scheduler(make_app(beat_missed_ticks="twice"), clock=Clock())


# -- several schedulers ------------------------------------------------------------


def test_only_the_leader_sends_and_a_standby_takes_over_within_the_bound(make_app, schedulers):
    app = make_app(EVERY_SECOND, beat_lease_seconds=3.0)
    clock = Clock()
    a, b, c = (schedulers(app, clock, o) for o in "ABC")
    for s in (a, b, c):
        s.setup()
        s.tick()
    assert (a.is_leader, b.is_leader, c.is_leader) == (True, False, False)
    step = 0.1
    while clock.t < T0 + 10:
        clock.t = round(clock.t + step, 6)
        for s in (a, b, c):
            s.tick()
    assert ids(app) == [tid("sec", T0 + i) for i in range(1, 11)]
    # A dies (no more passes, no release); B or C takes over within lease + renew interval
    died = clock.t
    while not (b.is_leader or c.is_leader):
        clock.t = round(clock.t + step, 6)
        b.tick()
        c.tick()
    assert clock.t - died <= a.takeover_bound + step
    assert not (b.is_leader and c.is_leader)
    run_until = clock.t + 5
    while clock.t < run_until:
        clock.t = round(clock.t + step, 6)
        b.tick()
        c.tick()
    last = int(clock.t)
    assert ids(app) == [tid("sec", T0 + i) for i in range(11, last - int(T0) + 1)]  # none missed, none doubled
    # A was only paused: it wakes up, finds its lease gone, and sends nothing
    a.tick()
    assert not a.is_leader and sent(app) == []


def test_a_leader_that_stops_cleanly_hands_over_within_a_renew_interval(make_app, schedulers):
    app = make_app(EVERY_SECOND)  # 5 s lease
    clock = Clock()
    a, b = schedulers(app, clock, "A"), schedulers(app, clock, "B")
    for s in (a, b):
        s.setup()
        s.tick()
    run(a, clock, T0 + 2)
    a.close()  # releases the lease
    stopped = clock.t
    while not b.is_leader:
        clock.t = round(clock.t + 0.1, 6)
        b.tick()
    assert clock.t - stopped <= b.renew_interval + 0.1
    run(b, clock, T0 + 4)
    assert ids(app) == [tid("sec", T0 + i) for i in range(1, 5)]


def test_split_brain_during_handover_still_sends_each_tick_once(make_app, schedulers):
    """Two schedulers both believe they lead (a skewed clock): the compare-and-set keeps ticks single."""
    app = make_app(EVERY_SECOND, beat_lease_seconds=2.0)
    ca, cb = Clock(), Clock()
    a = schedulers(app, ca, "A")
    b = schedulers(app, cb, "B")
    a.setup()
    a.tick()
    cb.t = T0 + 2.5  # B's clock runs ahead: it sees A's lease as expired and takes it
    b.setup()
    b.tick()
    assert a.is_leader and b.is_leader
    for _ in range(40):
        ca.t = round(ca.t + 0.1, 6)
        cb.t = round(cb.t + 0.1, 6)
        a.tick()
        b.tick()
    got = ids(app)
    assert len(got) == len(set(got))
    assert got == [tid("sec", T0 + i) for i in range(1, len(got) + 1)]
    assert not a.is_leader and b.is_leader  # A stepped down when its renewal failed


def test_a_tick_claimed_by_a_sender_that_died_is_sent_again_with_the_same_id(make_app, schedulers, caplog):
    app = make_app(EVERY_SECOND, beat_lease_seconds=2.0)
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    entry = s.store.get("sec")
    assert entry is not None
    # another scheduler claimed the first tick and died before publishing it
    assert s.store.claim("sec", entry.next_run, entry.next_run + SECOND, entry.next_run, "dead:1", us(T0 + 1))
    clock.t = T0 + 1.5
    s.tick()
    assert sent(app) == []  # the claim is younger than the lease: its owner may still be sending
    clock.t = T0 + 2.2
    assert s.tick() >= 0.1  # the entry is due but blocked behind the pending tick: no busy loop
    assert sent(app) == []
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        run(s, clock, T0 + 4)
    assert "dead:1 claimed it and stopped before confirming the send" in caplog.text
    assert ids(app) == [tid("sec", T0 + i) for i in range(1, 5)]
    assert s.store.pending() == []


def test_an_unreadable_schedule_in_the_store_is_logged_and_does_not_stop_the_others(make_app, schedulers,
                                                                                    caplog):
    from celeriac.beat.entries import Entry
    app = make_app(EVERY_SECOND)
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    bad = {"type": "crontab", "minute": "99", "hour": "*", "day_of_week": "*", "day_of_month": "*",
           "month_of_year": "*", "tz": None}
    assert s.store.put(Entry("bad", "proj.t", bad, next_run=us(T0 + 1)))
    with caplog.at_level(logging.ERROR, logger="celeriac.beat"):
        clock.t = T0 + 1
        assert s.tick() >= 0.1
        clock.t = T0 + 2
        s.tick()
    assert caplog.text.count("entry 'bad' has an invalid schedule") == 1
    assert ids(app) == [tid("sec", T0 + 1), tid("sec", T0 + 2)]


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ({"task": "proj.t", "schedule": "every minute"}, "schedule must be seconds"),
    ({"schedule": 5}, "missing 'task'"),
    ({"task": "proj.t"}, "missing 'schedule'"),
    ({"task": "proj.t", "schedule": 5, "args": 3}, "'args' must be a list"),
    ({"task": "proj.t", "schedule": 5, "kwargs": [1]}, "'kwargs' must be a dict"),
    ({"task": "proj.t", "schedule": 5, "sched": 5}, "unknown key"),
    ({"task": "proj.t", "schedule": -5}, "positive"),
    ("proj.t", "expected a dict"),
])
def test_a_bad_beat_schedule_entry_fails_at_start_naming_it(make_app, spec, message):
    app = make_app({"nightly": spec})
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        Scheduler(app, clock=Clock()).setup()
    assert "beat_schedule entry 'nightly'" in str(info.value)


def test_invalid_crontab_fields_fail_at_definition_naming_field_and_value():
    with pytest.raises(ParseException, match="minute=.61"):
        crontab(minute=61)
    with pytest.raises(ParseException, match="day_of_week=.funday"):
        crontab(day_of_week="funday")


def test_add_periodic_task_in_on_after_configure(make_app, schedulers):
    app = make_app()

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celery, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, sender.tasks["proj.t"], args=(5,), name="add every 10")
        sender.add_periodic_task(crontab(minute=0, hour=7, day_of_week="mon"), sender.tasks["proj.t"],
                                 args=("monday",), name="monday morning")

    clock = Clock()
    s = schedulers(app, clock, "A")
    entries = {e.name: e for e in s.setup()}
    assert set(entries) == {"add every 10", "monday morning"}
    assert entries["monday morning"].next_run_at == datetime(2023, 11, 20, 7, 0, tzinfo=UTC)
    clock.t = T0 + 10
    s.tick()
    [env] = sent(app)
    assert env.headers["id"] == tid("add every 10", T0 + 10)


def test_crontab_at_nine_in_moscow_is_sent_at_six_utc(make_app, schedulers):
    app = make_app({"report": {"task": "proj.t", "schedule": crontab(minute=0, hour=9)}},
                   timezone="Europe/Moscow")
    start = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    clock = Clock(start)
    s = schedulers(app, clock, "A")
    [entry] = s.setup()
    assert entry.next_run_at == datetime(2024, 3, 2, 6, 0, tzinfo=UTC)
    assert entry.schedule_dict["tz"] == "Europe/Moscow"
    clock.t = datetime(2024, 3, 2, 5, 59, 59, tzinfo=UTC).timestamp()
    s.tick()
    assert sent(app) == []
    clock.t = datetime(2024, 3, 2, 6, 0, 0, tzinfo=UTC).timestamp()
    s.tick()
    assert len(sent(app)) == 1


def test_enable_utc_false_uses_local_time(make_app, schedulers, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    app = make_app({"r": {"task": "proj.t", "schedule": crontab(minute=0, hour=9)}}, enable_utc=False)
    [entry] = schedulers(app, Clock(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()), "A").setup()
    assert entry.next_run_at == datetime(2024, 3, 2, 0, 0, tzinfo=UTC)


def test_config_changes_at_restart(make_app, schedulers):
    clock = Clock()
    app = make_app({"keep": {"task": "proj.t", "schedule": 10.0}, "drop": {"task": "proj.t", "schedule": 10.0},
                    "change": {"task": "proj.t", "schedule": 10.0}})
    a = schedulers(app, clock, "A")
    a.setup()
    ScheduleStore(app, a.store).add("api-added", "proj.t", 30.0)
    a.close()
    clock.t = T0 + 3
    app2 = make_app({"keep": {"task": "proj.t", "schedule": 10.0, "args": [1]},
                     "change": {"task": "proj.t", "schedule": 20.0}})
    rows = {e.name: e for e in schedulers(app2, clock, "B").setup()}
    assert set(rows) == {"keep", "change", "api-added"}
    assert rows["keep"].next_run == us(T0 + 10) and rows["keep"].args == [1]  # unchanged schedule: same tick
    assert rows["change"].next_run == us(T0 + 23)  # new schedule: from now


# -- run-time changes ----------------------------------------------------------------


def test_schedule_store_changes_reach_a_running_scheduler(make_app, schedulers):
    app = make_app()
    clock = Clock()
    s = schedulers(app, clock, "A")
    s.setup()
    s.tick()
    api = ScheduleStore(app)
    try:
        entry = api.add("dyn", "proj.t", 2.0, args=[1], options={"queue": "dynq"})
        assert (entry.source, entry.enabled, entry.next_run_at.tzinfo) == ("api", True, UTC)
        with pytest.raises(ScheduleEntryError, match="exists already"):
            api.add("dyn", "proj.t", 5.0)
        wall = datetime.now(UTC).timestamp()  # the API stamps with the real clock
        clock.t = wall
        s.tick()
        assert sent(app, "dynq") == []
        clock.t = wall + 2.5
        s.tick()
        assert len(sent(app, "dynq")) == 1
        api.disable("dyn")
        clock.t = wall + 10
        s.tick()
        assert sent(app, "dynq") == []
        api.update("dyn", args=[2], options={"queue": "dynq2"})
        clock.t = wall + 20
        s.tick()
        assert sent(app, "dynq2") == []  # still disabled
        api.enable("dyn")
        assert api.get("dyn").next_run >= us(wall + 2)  # type: ignore[union-attr]
        clock.t = datetime.now(UTC).timestamp() + 2.1
        s.tick()
        [env] = sent(app, "dynq2")
        assert decode_task_message(env).args == [2]
        api.remove("dyn")
        with pytest.raises(ScheduleEntryError):
            api.remove("dyn")
        clock.t += 10
        s.tick()
        assert sent(app, "dynq2") == []
        assert [e.name for e in api.list()] == []
    finally:
        api.close()


# -- scheduler selection -------------------------------------------------------------


class CustomScheduler(Scheduler):
    pass


def test_scheduler_paths(caplog):
    assert resolve_scheduler("celery.beat:PersistentScheduler") is Scheduler
    assert resolve_scheduler(None) is Scheduler
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        assert resolve_scheduler("django_celery_beat.schedulers:DatabaseScheduler") is Scheduler
    assert "django_celery_beat.schedulers:DatabaseScheduler belongs to another package" in caplog.text
    assert resolve_scheduler(f"{__name__}:CustomScheduler") is CustomScheduler
    assert resolve_scheduler(f"{__name__}.CustomScheduler") is CustomScheduler
    with pytest.raises(ImproperlyConfigured, match="Cannot import"):
        resolve_scheduler("nowhere.at_all:Scheduler")
    with pytest.raises(ImproperlyConfigured, match="not a subclass"):
        resolve_scheduler("logging:Logger")


def test_embedded_beat_sends_from_a_thread(make_app):
    app = make_app({"fast": {"task": "proj.t", "schedule": 0.5}}, beat_lease_seconds=1.0)
    beat = EmbeddedBeat(app)
    beat.start()
    try:
        assert beat.is_alive()
        import time
        deadline = time.monotonic() + 30
        got: list[Any] = []
        while len(got) < 3 and time.monotonic() < deadline:
            got += sent(app)
            time.sleep(0.1)
        assert len(got) >= 3
        assert len({e.headers["id"] for e in got}) == len(got)
    finally:
        beat.stop()
    assert not beat.is_alive()


def test_to_us_of_the_test_epoch():
    assert to_us(datetime.fromtimestamp(T0, UTC)) == us(T0)
