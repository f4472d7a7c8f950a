"""Retries with real worker processes on the embedded SQLite broker and on Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, open_sem
from support import wait_for

from celeriac.exceptions import MaxRetriesExceededError


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def test_seed_003_unreliable_task_waits_in_the_broker(sem: Sem):
    """``raise self.retry(exc=exc, countdown=60)``: RETRY is recorded and the message waits in the
    broker's table (not leased by a worker) until it is due; then it runs with retries == 1."""
    sem.worker("-c", "2")
    res = sem.send("unreliable_task", 1, 60)
    wait_for(lambda: res.state == "RETRY", 20, message="RETRY state")
    assert isinstance(res.info, ConnectionError) and "service down" in str(res.info)
    [due] = wait_for(sem.delayed_due, 10, message="a delayed message")
    assert 50 < due - time.time() <= 61
    stats = sem.client.broker.stats("celery")
    assert (stats.delayed, stats.ready, stats.leased) == (1, 0, 0)

    soon = sem.send("unreliable_task", 1, 2)
    wait_for(lambda: soon.state == "RETRY", 20, message="RETRY state")
    assert sem.client.broker.stats("celery").delayed == 2
    assert soon.get(timeout=20) == "ok"
    runs = [e for e in sem.events("unreliable")]
    assert [e[1] for e in runs] == ["0", "0", "1"]
    assert float(runs[2][2]) - float(runs[1][2]) >= 1.9
    assert res.state == "RETRY"  # still waiting for its minute


def test_seed_003_send_email_retry_without_raise(sem: Sem):
    """``self.retry(exc=exc, countdown=...)`` without ``raise`` still stops the task; after
    max_retries the exception given as ``exc`` is raised (Celery's rule)."""
    sem.worker("-c", "2")
    ok = sem.send("send_email", "a@example.com", 2)
    bad = sem.send("send_email", "b@example.com")
    assert ok.get(timeout=30) == "sent to a@example.com"
    exc = bad.get(timeout=30, propagate=False)
    assert type(exc).__name__ == "SpecificError" and "b@example.com" in str(exc)
    assert bad.state == "FAILURE"
    attempts = [int(e[1]) for e in sem.events("send_email")]
    assert sorted(attempts) == sorted([0, 1, 2] + [0, 1, 2, 3, 4, 5])  # 1 + max_retries=5 runs


def test_max_retries_exceeded_error_and_overrides(sem: Sem):
    sem.worker("-c", "2")
    no_exc = sem.send("retry_without_exc")
    override = sem.send("retry_max_override")
    forever = sem.send("retry_forever", 6)
    with pytest.raises(MaxRetriesExceededError):
        no_exc.get(timeout=30)
    assert [e[1] for e in sem.events("retry_without_exc")] == ["0", "1", "2"]
    with pytest.raises(MaxRetriesExceededError):
        override.get(timeout=30)
    assert len(sem.events("retry_max_override")) == 4  # retry(max_retries=3) beats the task's 1
    assert forever.get(timeout=30) == 6  # max_retries=None retries past the default of 3


def test_default_retry_delay_and_eta(sem: Sem):
    sem.worker("-c", "2")
    a, b = sem.send("default_delay"), sem.send("retry_eta")
    assert a.get(timeout=30) == "done" and b.get(timeout=30) == "done"
    t0, t1 = (float(e[2]) for e in sem.events("default_delay"))
    assert t1 - t0 >= 0.45  # default_retry_delay=0.5
    t0, t1 = (float(e[2]) for e in sem.events("retry_eta"))
    assert t1 - t0 >= 0.6  # eta=now+0.7s


def test_autoretry_for_and_dont_autoretry_for(sem: Sem):
    sem.worker("-c", "2")
    recovers = sem.send("autoretry", 2)
    gives_up = sem.send("autoretry", 99)
    assert recovers.get(timeout=30) == 2
    exc = gives_up.get(timeout=30, propagate=False)
    assert isinstance(exc, ConnectionError) and "attempt 4" in str(exc)  # retry_kwargs max_retries=4

    value = sem.send("dont_autoretry", "value")
    assert isinstance(value.get(timeout=30, propagate=False), ValueError)
    key = sem.send("dont_autoretry", "key")
    assert isinstance(key.get(timeout=30, propagate=False), KeyError)
    runs = [e[1] for e in sem.events("dont_autoretry")]
    assert runs.count("0") == 2 and runs.count("3") == 1 and len(runs) == 5  # 1 + (1 + 3 retries)


def test_retry_backoff_with_cap_and_no_jitter(sem: Sem):
    """retry_backoff=True: 1 s, 2 s, ... capped by retry_backoff_max=1; jitter off."""
    sem.worker("-c", "1")
    res = sem.send("backoff")
    assert isinstance(res.get(timeout=30, propagate=False), ConnectionError)
    times = [float(e[2]) for e in sem.events("backoff")]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0.9 <= g < 5 for g in gaps), gaps


def test_retry_with_unserializable_arguments_is_a_clear_error(sem: Sem):
    sem.worker("-P", "solo")
    res = sem.send("retry_unserializable")
    exc = res.get(timeout=30, propagate=False)
    assert isinstance(exc, TypeError)
    assert "argument 0" in str(exc) and "cannot be serialized" in str(exc)


def test_retry_signals_and_hooks(sem: Sem):
    sem.worker("-P", "solo")
    res = sem.send("hooked", "retry")
    assert res.get(timeout=30) == "retry"
    [on_retry] = sem.events("on_retry")
    assert "ConnectionError" in on_retry[1] and on_retry[2] == res.id
    assert [e[2] for e in sem.events("task_retry")] == [res.id]
    assert [e[1] for e in sem.events("after_return") if e[2] == res.id] == ["RETRY", "SUCCESS"]
    # the retried message was published by the worker: its publish signals fired there
    assert any(e[2] == res.id for e in sem.events("after_task_publish"))
