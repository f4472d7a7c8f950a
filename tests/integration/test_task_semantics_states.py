"""States and results with real worker processes: STARTED, custom states, ignore_result,
result_extended, result_expires, expiry on arrival, Reject, Ignore, throws, task loggers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, open_sem
from support import wait_for

from celeriac.exceptions import TaskRevokedError


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def test_track_started_per_task_and_per_setting(sem: Sem):
    sem.worker("-c", "2", conf={"task_track_started": True})
    plain = sem.send("sleeper", 1.0)
    own = sem.send("early_sleeper", 1.0, "x")
    for res in (plain, own):
        wait_for(lambda r=res: r.state == "STARTED", 20, message="STARTED")
        assert res.info["hostname"].startswith("celeriac@") and isinstance(res.info["pid"], int)
    assert own.get(timeout=20) == "x" and isinstance(plain.get(timeout=20), int)


def test_without_track_started_a_running_task_is_pending(sem: Sem):
    sem.worker("-c", "1")
    res = sem.send("sleeper", 1.0, "p")
    sem.wait_events("start", 1)
    assert res.state == "PENDING"
    res.get(timeout=20)
    assert res.state == "SUCCESS"


def test_custom_state_with_update_state(sem: Sem):
    sem.worker("-c", "1")
    gate = sem.path / "gate"
    res = sem.send("progress", 3, str(gate))
    for i in range(3):
        wait_for(lambda i=i: res.state == "PROGRESS" and res.info == {"current": i, "total": 3}, 20,
                 message=f"PROGRESS {i}")
        (sem.path / f"gate.{i}").touch()
    assert res.get(timeout=20) == 3 and res.state == "SUCCESS"


def test_ignore_result_and_store_errors_even_if_ignored(sem: Sem):
    sem.worker("-c", "2")
    ignored = sem.send("ignored", 7)
    stored_error = sem.send("ignored_but_errors")
    unstored_error = sem.send("ignored_fail")
    per_call = sem.send("add", 1, 1, ignore_result=True)
    assert isinstance(stored_error.get(timeout=20, propagate=False), KeyError)
    sem.wait_events("ignored_ran", 1)
    wait_for(lambda: sem.client.broker.stats("celery").leased == 0
             and sem.client.broker.stats("celery").ready == 0, 20, message="all done")
    time.sleep(0.5)
    assert (ignored.state, unstored_error.state, per_call.state) == ("PENDING",) * 3


def test_task_ignore_result_setting(sem: Sem):
    sem.worker("-P", "solo", conf={"task_ignore_result": True})
    res = sem.send("add", 2, 2)
    wait_for(lambda: sem.client.broker.stats("celery").ready == 0
             and sem.client.broker.stats("celery").leased == 0, 20, message="the task to run")
    time.sleep(0.5)
    assert res.state == "PENDING"


def test_result_extended_and_seed_004_rerun_with_saved_kwargs(sem: Sem):
    """seed 004: with CELERY_RESULT_EXTENDED the arguments are saved, and a task is re-run as
    ``add.apply_async(kwargs=saved_kwargs)``."""
    sem.worker("-c", "2", conf={"result_extended": True})
    first = sem.send("add", kwargs={"a": 5, "b": 5})
    assert first.get(timeout=20) == 10
    saved = sem.client.AsyncResult(first.id)
    assert saved.name == "semapp.add"
    assert saved.args == [] and saved.kwargs == {"a": 5, "b": 5}
    assert saved.worker.startswith("celeriac@") and saved.retries == 0 and saved.queue == "celery"
    assert isinstance(saved.date_started, datetime) and saved.date_done >= saved.date_started

    @sem.client.task(name="semapp.add")
    def add(a: int, b: int) -> int:
        return a + b

    again = add.apply_async(kwargs=sem.client.AsyncResult(first.id).kwargs)
    assert again.id != first.id and again.get(timeout=20) == 10
    retried = sem.send("unreliable_task", 1, 0.05)
    assert retried.get(timeout=20) == "ok"
    assert sem.client.AsyncResult(retried.id).retries == 1


def test_result_expires_hides_then_deletes_results(sem: Sem):
    sem.worker("-P", "solo", conf={"result_expires": 1})
    client = sem.client
    client.conf.result_expires = 1
    old = sem.send("add", 1, 2)
    assert old.get(timeout=20) == 3
    time.sleep(1.3)
    assert client.AsyncResult(old.id).state == "PENDING"  # expired: not returned any more
    # SQLite: a later write cleans the table up; Redis: the key's TTL removed it
    assert sem.send("add", 2, 2).get(timeout=20) == 4
    wait_for(lambda: not sem.result_stored(old.id), 10, message="the expired result to be deleted")


def test_expired_on_arrival_is_revoked(sem: Sem):
    res = sem.send("add", 1, 1, expires=0.3)
    time.sleep(0.6)
    sem.worker("-P", "solo")
    assert isinstance(res.get(timeout=20, propagate=False), TaskRevokedError)
    assert res.state == "REVOKED"
    [revoked] = sem.wait_events("task_revoked", 1)
    assert revoked[1:] == [res.id, "True"]


def test_reject_dead_letters_or_requeues(sem: Sem):
    worker = sem.worker("-c", "2")
    dead = sem.send("rejecter", False)
    again = sem.send("rejecter", True)
    assert again.get(timeout=20) == "second time"
    [letter] = wait_for(lambda: sem.client.broker.dead_letters(), 20, message="a dead letter")
    assert letter.task_id == dead.id and "not now" in letter.reason
    assert dead.state == "PENDING"  # as in Celery, a rejected task stores no result
    assert [e[1] for e in sem.events("task_rejected")] == ["Reject", "Reject"]
    assert "rejected" in worker.log()


def test_ignore_records_nothing(sem: Sem):
    sem.worker("-P", "solo")
    res = sem.send("ignorer")
    sem.wait_events("ignorer", 1)
    wait_for(lambda: sem.client.broker.stats("celery").leased == 0, 20, message="acked")
    time.sleep(0.3)
    assert res.state == "PENDING"
    assert sem.client.broker.stats("celery").ready == 0 and not sem.client.broker.dead_letters()


def test_throws_logs_expected_errors_without_traceback(sem: Sem):
    worker = sem.worker("-P", "solo")
    expected, unexpected = sem.send("expected_error"), sem.send("unexpected_error")
    assert isinstance(expected.get(timeout=20, propagate=False), KeyError)
    assert isinstance(unexpected.get(timeout=20, propagate=False), KeyError)
    log = worker.log()
    [line] = [ln for ln in log.splitlines() if "raised expected" in ln]
    assert "INFO" in line and expected.id in line
    assert f"semapp.unexpected_error[{unexpected.id}] raised unexpected" in log
    after = log.split("raised expected", 1)[1].split("raised unexpected", 1)[0]
    assert "Traceback" not in after  # the expected error has no traceback in the log


def test_task_logger_lines_carry_name_and_id(sem: Sem):
    worker = sem.worker("-c", "1")
    res = sem.send("logs")
    assert res.get(timeout=20) == res.id
    [line] = [ln for ln in worker.log().splitlines() if "hello from the task" in ln]
    assert f"semapp.logs[{res.id}]: hello from the task" in line and "INFO/ForkPoolWorker" in line
