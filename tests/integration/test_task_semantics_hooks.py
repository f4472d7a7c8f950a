"""Task hooks and Celery's signals, fired in real worker processes (and in a client process)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, Sem, open_sem
from support import env_for, wait_for

from celeriac.protocol.message import build_task_message


@pytest.fixture(params=BROKER_KINDS)
def sem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, request.param)


def test_task_method_hooks(sem: Sem):
    sem.worker("-c", "2")
    ok, bad = sem.send("hooked", "ok"), sem.send("hooked", "fail")
    assert ok.get(timeout=20) == "ok"
    assert isinstance(bad.get(timeout=20, propagate=False), ValueError)
    assert ["before_start", ok.id, "['ok']"] in sem.events("before_start")
    assert ["on_success", "ok", ok.id, "['ok']", "{}"] in sem.events("on_success")
    [failure] = sem.events("on_failure")
    assert failure == ["on_failure", "ValueError('hook me')", bad.id, "True", "ValueError"]
    returns = {e[2]: e[1] for e in sem.events("after_return")}
    assert returns == {ok.id: "SUCCESS", bad.id: "FAILURE"}


def test_decorator_hooks_of_seed_004(sem: Sem):
    """``@shared_task(on_failure=f, on_success=g, name="Simple function")``: f and g get the task
    first, as Celery's methods do."""
    sem.worker("-P", "solo")
    good = sem.client.send_task("Simple function", (2, 3))
    assert good.get(timeout=20) == 5
    bad = sem.client.send_task("Simple function", ("a", 1))
    assert isinstance(bad.get(timeout=20, propagate=False), TypeError)
    assert sem.events("deco_success") == [["deco_success", "Simple function", "5"]]
    [[_, name, exc, task_id]] = sem.events("deco_failure")
    assert name == "Simple function" and "TypeError" in exc and task_id == bad.id


def test_task_signals_with_sender_filters(sem: Sem):
    sem.worker("-c", "2")
    added = sem.send("add", 1, 2)
    hooked_fail = sem.send("hooked", "fail")
    other_fail = sem.send("unexpected_error")
    assert added.get(timeout=20) == 3
    for res in (hooked_fail, other_fail):
        res.get(timeout=20, propagate=False)
    wait_for(lambda: len(sem.events("task_postrun")) == 3, 20, message="3 postrun signals")
    ids = {added.id, hooked_fail.id, other_fail.id}
    assert {e[2] for e in sem.events("task_prerun")} == ids
    assert {e[2]: e[3] for e in sem.events("task_postrun")} == {
        added.id: "SUCCESS", hooked_fail.id: "FAILURE", other_fail.id: "FAILURE"}
    assert {e[1] for e in sem.events("task_received")} == ids
    # task_success was connected with sender="semapp.add"; task_failure with sender=hooked
    assert sem.events("task_success") == [["task_success", "semapp.add", "3"]]
    [failure] = sem.events("task_failure")
    assert failure[1:3] == ["semapp.hooked", hooked_fail.id] and failure[4] == "True"


def test_worker_signals_fire_in_order(sem: Sem):
    worker = sem.worker("-c", "2")
    assert sem.send("add", 1, 1).get(timeout=20) == 2
    children = [int(e[1]) for e in sem.wait_events("worker_process_init", 2)]
    worker.stop()
    kinds = [e[0] for e in sem.events()]
    main = str(worker.proc.pid)
    for name in ("celeryd_init", "after_setup_logger", "after_setup_task_logger", "worker_init",
                 "worker_ready", "worker_shutdown"):
        assert [e[1] for e in sem.events(name)] == [main], name
    order = [kinds.index(n) for n in ("celeryd_init", "after_setup_logger", "worker_init",
                                      "worker_process_init", "worker_ready", "task_prerun",
                                      "worker_process_shutdown", "worker_shutdown")]
    assert order == sorted(order), kinds
    assert sorted(int(e[1]) for e in sem.events("worker_process_shutdown")) == sorted(children)


def test_unknown_and_undecodable_messages_fire_signals(sem: Sem):
    sem.worker("-P", "solo")
    unknown = sem.client.send_task("semapp.nope", (1,))
    broken = build_task_message("semapp.add", "broken-1", (1, 2))
    broken.body = b"\xff not json"
    sem.client.broker.publish(broken, "celery")
    unknown.get(timeout=20, propagate=False)
    assert sem.wait_events("task_unknown", 1) == [["task_unknown", "semapp.nope", unknown.id]]
    assert [e[1] for e in sem.wait_events("task_rejected", 1)] == ["DecodeError"]


def test_setup_logging_receiver_replaces_the_worker_logging(sem: Sem):
    worker = sem.worker("-P", "solo", SEM_SETUP_LOGGING="1")
    assert sem.send("add", 3, 4).get(timeout=20) == 7
    [[_, level]] = sem.events("setup_logging")
    assert level == "20"  # INFO
    assert sem.events("after_setup_logger") == []  # Celery: a receiver takes over the setup
    assert "custom-logging" in worker.log()


def test_publish_signals_fire_in_the_client(sem: Sem):
    code = "import semapp; r = semapp.add.delay(1, 2); print(r.id)"
    out = subprocess.run([sys.executable, "-c", code], cwd=sem.path, env=env_for(sem.path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    assert sem.events("before_task_publish") == [["before_task_publish", "semapp.add", task_id]]
    assert sem.events("after_task_publish") == [["after_task_publish", "semapp.add", task_id]]
