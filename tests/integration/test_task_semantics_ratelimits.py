"""Rate limits with real workers: per worker (Celery's rate_limit) and global (all workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, elapsed, open_sem

from celeriac.result import ResultSet


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def _run(sem: Sem, name: str, n: int) -> tuple[float, list[float]]:
    results = [sem.send(name, i) for i in range(n)]
    took, stamps = elapsed(lambda: ResultSet(results, app=sem.client).get(timeout=120))
    return took, sorted(stamps)


def test_rate_limit_is_per_worker_across_its_processes(sem: Sem):
    """rate_limit='10/s' on a 2-process worker: 10/s in all (each child takes half)."""
    sem.worker("-c", "2")
    took, stamps = _run(sem, "limited", 20)
    span = stamps[-1] - stamps[0]
    assert 1.5 <= span < 15, span
    # never more than ~10 in any one-second window (one token each for the two children)
    assert max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps) <= 12


def test_global_rate_limit_is_shared_by_all_workers(sem: Sem):
    """global_rate_limit='10/s' with two workers: 40 tasks take at least ~3.5 s."""
    sem.worker("-c", "1", "-n", "w1@%h")
    sem.worker("-c", "1", "-n", "w2@%h")
    took, stamps = _run(sem, "globally_limited", 40)
    assert took >= 3.5 and stamps[-1] - stamps[0] >= 3.5, (took, stamps[-1] - stamps[0])
    assert took < 30


def test_worker_disable_rate_limits(sem: Sem):
    sem.worker("-c", "2", conf={"worker_disable_rate_limits": True})
    took, stamps = _run(sem, "limited", 20)
    assert stamps[-1] - stamps[0] < 1.2, stamps[-1] - stamps[0]


def test_default_rate_limit_setting(sem: Sem):
    sem.worker("-P", "solo", conf={"task_default_rate_limit": "5/s"})
    results = [sem.send("getpid") for _ in range(6)]
    took, _ = elapsed(lambda: ResultSet(results, app=sem.client).get(timeout=60))
    assert took >= 0.9  # 6 tasks at 5/s: the first at once, then one every 0.2 s
