"""Acks, worker loss, prefetch, recycling and autoscaling with real worker processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, alive, children_of, open_sem
from support import wait_for

from celeriac.exceptions import WorkerLostError
from celeriac.result import ResultSet


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def test_child_killed_mid_task_reruns_an_acks_late_task(sem: Sem):
    worker = sem.worker("-c", "2")
    res = sem.send("late_suicide", str(sem.path / "killed-once"))
    assert res.get(timeout=30) == "survived"
    assert [e[1] for e in sem.events("late_suicide")] == ["False", "True"]  # redelivered the second time
    wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 20, message="the pool back to 2")
    assert "exited with code -9" in worker.log()


def test_child_killed_mid_task_without_acks_late_is_worker_lost(sem: Sem):
    sem.worker("-c", "2")
    plain, no_requeue = sem.send("suicide"), sem.send("late_suicide_no_requeue")
    for res in (plain, no_requeue):
        exc = res.get(timeout=30, propagate=False)
        assert isinstance(exc, WorkerLostError), exc
        assert res.state == "FAILURE"
    assert sem.client.broker.stats("celery").ready == 0  # acked: not run again
    assert sem.send("add", 1, 2).get(timeout=20) == 3


def test_whole_worker_sigkilled_messages_come_back_after_the_lease(sem: Sem):
    """The main process is SIGKILLed: its children exit on their own, the leases lapse, and a new
    worker settles each message: a started ack-early task is WorkerLostError, acks_late re-runs."""
    worker = sem.worker("-c", "2", "-O", "fair", lease=2)  # one task per process
    children = children_of(worker.proc.pid)
    early = sem.send("early_sleeper", 6, "early")
    late = sem.send("late_sleeper", 6, "late")
    sem.wait_events("early_start", 1)
    sem.wait_events("late_start", 1)
    wait_for(lambda: early.state == "STARTED", 10, message="STARTED (track_started)")
    time.sleep(1.5)  # > one heartbeat (lease / 3): both are marked started in the broker
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    for pid in children:
        wait_for(lambda p=pid: not alive(p), 10, message=f"child {pid} to exit with its parent")
    assert early.state == "STARTED" and late.state == "PENDING"
    sem.worker("-c", "2", lease=2)
    assert isinstance(early.get(timeout=30, propagate=False), WorkerLostError)
    assert late.get(timeout=40) == "late"
    assert len(sem.events("late_start")) == 2 and len(sem.events("early_start")) == 1


def test_acks_on_failure_or_timeout(sem: Sem):
    sem.worker("-c", "2")
    dead, acked = sem.send("late_fails"), sem.send("late_fails_acked")
    assert isinstance(dead.get(timeout=30, propagate=False), RuntimeError)
    assert isinstance(acked.get(timeout=30, propagate=False), RuntimeError)
    [letter] = wait_for(lambda: sem.client.broker.dead_letters(), 10, message="a dead letter")
    assert letter.task_id == dead.id and "acks_on_failure_or_timeout=False" in letter.reason
    stats = sem.client.broker.stats("celery")
    assert (stats.ready, stats.delayed, stats.leased) == (0, 0, 0)


def _leased_samples(sem: Sem, until: object) -> list[int]:
    samples = []
    while not until():  # type: ignore[operator]
        samples.append(sem.client.broker.stats("celery").leased)
        time.sleep(0.02)
    return samples


def test_fair_prefetch_one_long_task_does_not_hold_short_ones(sem: Sem):
    sem.worker("-c", "2", "-O", "fair")
    long = sem.send("sleeper", 5, "long")
    sem.wait_events("start", 1)
    shorts = [sem.send("sleeper", 0.1, f"s{i}") for i in range(8)]
    samples = _leased_samples(sem, lambda: all(r.ready() for r in shorts))
    assert 1 <= max(samples) <= 2  # each busy process holds at most its running task
    assert not long.ready()  # every short task finished while the long one ran
    long.get(timeout=30)
    ends = {e[1]: float(e[3]) for e in sem.events("end")}
    assert max(ends[f"s{i}"] for i in range(8)) < ends["long"]


def test_prefetch_multiplier_setting(sem: Sem):
    sem.worker("-c", "1", conf={"worker_prefetch_multiplier": 1})
    results = [sem.send("sleeper", 0.2) for _ in range(5)]
    samples = _leased_samples(sem, lambda: all(r.ready() for r in results))
    assert max(samples) == 1  # the running task's lease, and nothing reserved beside it


def test_max_tasks_per_child_recycles_without_losing_tasks(sem: Sem):
    worker = sem.worker("-c", "2", "--max-tasks-per-child", "2")
    results = [sem.send("getpid") for _ in range(20)]
    pids = ResultSet(results, app=sem.client).get(timeout=60)
    assert len(pids) == 20
    assert len(set(pids)) >= 8  # 20 tasks, at most 2 per process
    wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 20, message="the pool back to 2")


def test_max_memory_per_child_recycles_without_losing_tasks(sem: Sem):
    sem.worker("-c", "1", "--max-memory-per-child", str(80 * 1024))
    results = [sem.send("hog", 64) for _ in range(4)]
    pids = ResultSet(results, app=sem.client).get(timeout=60)
    assert len(set(pids)) == 4  # each process grew past 80 MiB after one task and was replaced
    assert "more than max_memory_per_child" in sem.workers[0].log()


def test_autoscale_grows_under_backlog_and_shrinks_when_idle(sem: Sem):
    worker = sem.worker("--autoscale", "4,1", conf={"worker_autoscale_keepalive": 1.0})
    wait_for(lambda: len(children_of(worker.proc.pid)) == 1, 20, message="1 child at start")
    results = [sem.send("sleeper", 1.0, f"a{i}") for i in range(12)]
    wait_for(lambda: len(children_of(worker.proc.pid)) >= 3, 30, message="the pool to grow")
    pids = ResultSet(results, app=sem.client).get(timeout=60)
    assert len(set(pids)) >= 3
    wait_for(lambda: len(children_of(worker.proc.pid)) == 1, 30, message="the pool to shrink back")
    wait_for(lambda: "Autoscale: shrank" in worker.log(), 10, message="the shrink logged")
    assert "Autoscale: grew" in worker.log()
    assert sem.send("add", 2, 2).get(timeout=20) == 4
