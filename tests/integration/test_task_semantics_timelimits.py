"""Time limits with real worker processes: prefork, solo and threads; per task, per call, per worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, alive, children_of, open_sem
from support import run_cli, wait_for

from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def test_hard_limit_kills_and_replaces_the_process(sem: Sem):
    worker = sem.worker("-c", "2")
    wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 20, message="2 children")
    res = sem.send("hard_limited")
    exc = res.get(timeout=30, propagate=False)
    assert isinstance(exc, TimeLimitExceeded)
    assert res.state == "FAILURE"
    [[_, pid]] = sem.events("hard_start")
    wait_for(lambda: not alive(int(pid)), 10, message="the killed child to be gone")
    # the pool keeps its size and goes on working
    wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 20, message="a replacement child")
    assert int(pid) not in children_of(worker.proc.pid)
    assert sem.send("add", 2, 3).get(timeout=20) == 5
    assert "Hard time limit (1.0s) exceeded for semapp.hard_limited" in worker.log()


def test_soft_limit_is_raised_inside_the_task(sem: Sem):
    sem.worker("-c", "2")
    caught, uncaught = sem.send("soft_caught"), sem.send("soft_uncaught")
    assert caught.get(timeout=30) == "cleaned up"
    assert isinstance(uncaught.get(timeout=30, propagate=False), SoftTimeLimitExceeded)
    assert uncaught.state == "FAILURE"


def test_per_call_limits_travel_in_the_timelimit_header(sem: Sem):
    soft = sem.send("sleeper", 5, "soft", soft_time_limit=0.5)
    hard = sem.send("stubborn", 30, time_limit=1.5, soft_time_limit=0.5)
    headers = {h["id"]: h["timelimit"] for h in sem.queued_headers()}
    assert headers == {soft.id: [None, 0.5], hard.id: [1.5, 0.5]}
    sem.worker("-c", "2")
    assert isinstance(soft.get(timeout=30, propagate=False), SoftTimeLimitExceeded)
    assert sem.events("soft") == [["soft", "soft"]]
    assert isinstance(hard.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert len(sem.events("stubborn_soft")) == 1  # the soft limit came first, then the hard one


def test_worker_wide_limits_from_cli_flags_and_settings(sem: Sem):
    sem.worker("-c", "2", "--time-limit", "1.5", "--soft-time-limit", "0.5")
    soft = sem.send("sleeper", 5, "w")
    hard = sem.send("stubborn", 30)
    quick = sem.send("sleeper", 0.1)
    assert isinstance(soft.get(timeout=30, propagate=False), SoftTimeLimitExceeded)
    assert isinstance(hard.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert isinstance(quick.get(timeout=30), int)
    own = sem.send("hard_limited", 0.1)  # a task's own limit (1 s) still applies and is not reached
    assert own.get(timeout=30) == "finished"


def test_worker_wide_limits_from_settings(sem: Sem):
    sem.worker("-c", "1", conf={"task_soft_time_limit": 0.5, "task_time_limit": 20})
    assert isinstance(sem.send("sleeper", 5).get(timeout=30, propagate=False), SoftTimeLimitExceeded)


@pytest.mark.parametrize("sem", ["sqlite"], indirect=True)  # no broker involved
def test_cli_rejects_a_soft_limit_above_the_hard_one(sem: Sem):
    out = run_cli(sem.path, "-A", "semapp", "worker", "--time-limit", "1", "--soft-time-limit", "2",
                  timeout=60)
    assert out.returncode != 0
    assert "soft_time_limit (2.0) is larger than time_limit (1.0)" in out.stderr
    assert "Traceback" not in out.stderr


def test_solo_pool_enforces_soft_and_hard_limits_in_process(sem: Sem):
    """Solo has no supervisor to kill it: the hard limit is a second alarm that raises
    TimeLimitExceeded in the task; the worker process survives and goes on."""
    worker = sem.worker("-P", "solo")
    hard = sem.send("hard_limited")
    assert isinstance(hard.get(timeout=30, propagate=False), TimeLimitExceeded)
    [[_, pid]] = sem.events("hard_start")
    assert int(pid) == worker.proc.pid and alive(worker.proc.pid)
    assert sem.send("soft_caught").get(timeout=30) == "cleaned up"
    stubborn = sem.send("stubborn", 30, time_limit=1.5, soft_time_limit=0.5)
    assert isinstance(stubborn.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert len(sem.events("stubborn_soft")) == 1
    assert sem.send("add", 1, 1).get(timeout=20) == 2


def test_threads_pool_cannot_interrupt_a_task(sem: Sem):
    """Documented in docs/time-limits.md: threads enforce neither limit."""
    worker = sem.worker("-P", "threads", "-c", "2")
    res = sem.send("sleeper", 1.0, "t", soft_time_limit=0.3)
    assert isinstance(res.get(timeout=30), int)
    assert sem.events("soft") == []
    assert "Task semapp.sleeper has a time limit, which this pool (threads) cannot enforce" in worker.log()


def test_docs_say_what_the_threads_pool_cannot_enforce():
    text = (Path(__file__).resolve().parents[2] / "docs" / "time-limits.md").read_text()
    assert "threads" in text and "cannot" in text
