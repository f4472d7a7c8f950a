"""The worker on the embedded SQLite broker: bad input, shutdowns, crashes, sharing one file."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from support import WorkerProcess, run_cli, wait_for, write

from celeriac import Celery
from celeriac.exceptions import ContentDisallowed, NotRegistered
from celeriac.protocol.message import build_task_message

APP = """
import os, time
from celeriac import Celery
app = Celery('wapp', broker='sqlite:///{db}')
app.conf.broker_transport_options = {{'lease_seconds': float(os.environ.get('LEASE', '30'))}}

@app.task
def add(x, y):
    return x + y

@app.task
def sleepy(seconds, marker=None):
    time.sleep(seconds)
    if marker:
        with open(marker, 'a') as f:
            f.write('done\\n')
    return seconds

@app.task(acks_late=True)
def sleepy_late(seconds, marker=None):
    if marker:
        with open(marker, 'a') as f:
            f.write('start\\n')
    time.sleep(seconds)
    return seconds

@app.task
def record(path, n):
    with open(path, 'a') as f:
        f.write(f'{{n}}\\n')
    return n
"""


@pytest.fixture
def app_env(tmp_path: Path):
    db = tmp_path / "w.db"
    write(tmp_path / "wapp.py", APP.format(db=db))
    client = Celery("wapp", broker=f"sqlite:///{db}", set_as_current=False)
    yield tmp_path, client
    client.close()


def test_unknown_task_is_dead_lettered_and_fails(app_env):
    tmp_path, client = app_env
    with WorkerProcess(tmp_path, "wapp", "-P", "solo", "-l", "info") as worker:
        res = client.send_task("wapp.nope", (1,))
        with pytest.raises(NotRegistered):
            res.get(timeout=10)
        assert res.state == "FAILURE"
        assert client.send_task("wapp.add", (1, 2)).get(timeout=10) == 3  # worker keeps running
        assert "Received unregistered task of type 'wapp.nope'" in worker.log()
    [dead] = client.broker.dead_letters()
    assert dead.task_id == res.id and "NotRegistered" in dead.reason
    out = run_cli(tmp_path, "-A", "wapp", "dead-letters", "list")
    assert res.id in out.stdout and "NotRegistered" in out.stdout


def test_undecodable_and_disallowed_messages(app_env):
    tmp_path, client = app_env
    broken = build_task_message("wapp.add", "broken-1", (1, 2))
    broken.body = b"\xff not json"
    client.broker.publish(broken, "celery")
    pickled = build_task_message("wapp.add", "pickled-1", (1, 2), serializer="pickle")
    client.broker.publish(pickled, "celery")
    with WorkerProcess(tmp_path, "wapp", "-P", "solo"):
        assert client.send_task("wapp.add", (2, 2)).get(timeout=10) == 4
        wait_for(lambda: len(client.broker.dead_letters()) == 2, 10)
    reasons = {d.task_id: d.reason for d in client.broker.dead_letters()}
    assert "DecodeError" in reasons["broken-1"]
    assert "ContentDisallowed" in reasons["pickled-1"] and "pickle" in reasons["pickled-1"]
    with pytest.raises(ContentDisallowed):
        client.AsyncResult("pickled-1").get(timeout=5)


def test_pickle_runs_when_accepted(tmp_path: Path):
    db = tmp_path / "p.db"
    write(tmp_path / "papp.py", f"""
        from celeriac import Celery
        app = Celery('papp', broker='sqlite:///{db}')
        app.conf.accept_content = ['json', 'pickle']

        @app.task(serializer='pickle')
        def echo(x):
            return x
    """)
    client = Celery("papp", broker=f"sqlite:///{db}", set_as_current=False)
    with WorkerProcess(tmp_path, "papp", "-P", "solo"):
        assert client.send_task("papp.echo", ({"a": {1, 2}},), serializer="pickle").get(timeout=10) == {"a": [1, 2]}
    client.close()


def test_wrong_arguments_fail_and_worker_keeps_running(app_env):
    tmp_path, client = app_env
    with WorkerProcess(tmp_path, "wapp", "-c", "1"):
        bad = client.send_task("wapp.add", (1,))
        exc = bad.get(timeout=10, propagate=False)
        assert isinstance(exc, TypeError) and "y" in str(exc)
        assert bad.failed() and "TypeError" in bad.traceback
        assert client.send_task("wapp.add", (5, 5)).get(timeout=10) == 10


def test_task_exception_reraised_with_worker_traceback(app_env):
    tmp_path, client = app_env
    with WorkerProcess(tmp_path, "wapp", "-P", "solo"):
        res = client.send_task("wapp.add", (1, "x"))
        with pytest.raises(TypeError) as info:
            res.get(timeout=10)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Traceback from the worker" in notes and "wapp.py" in notes


def test_countdown_waits_in_the_table(app_env):
    tmp_path, client = app_env
    with WorkerProcess(tmp_path, "wapp", "-c", "2"):
        res = client.send_task("wapp.add", (1, 1), countdown=2)
        time.sleep(0.5)
        assert client.broker.stats("celery").delayed == 1
        assert res.state == "PENDING"
        assert res.get(timeout=10) == 2


def test_warm_shutdown_finishes_running_task(app_env):
    tmp_path, client = app_env
    marker = tmp_path / "m.txt"
    worker = WorkerProcess(tmp_path, "wapp", "-c", "1")
    res = client.send_task("wapp.sleepy", (1.5, str(marker)))
    wait_for(lambda: client.broker.stats("celery").leased == 1, 10)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert marker.read_text() == "done\n"
    assert res.get(timeout=5) == 1.5
    assert "Warm shutdown" in worker.log()
    worker.stop()


def test_cold_shutdown_gives_unfinished_tasks_back(app_env):
    tmp_path, client = app_env
    marker = tmp_path / "m.txt"
    worker = WorkerProcess(tmp_path, "wapp", "-c", "1")
    res = client.send_task("wapp.sleepy_late", (3, str(marker)))
    wait_for(lambda: marker.exists(), 10)
    worker.signal(signal.SIGTERM)
    time.sleep(0.2)
    worker.signal(signal.SIGQUIT)
    worker.proc.wait(30)
    worker.stop()
    assert "Cold shutdown" in worker.log()
    assert res.state == "PENDING"
    assert client.broker.stats("celery").ready == 1
    with WorkerProcess(tmp_path, "wapp", "-c", "1"):
        assert res.get(timeout=15) == 3


def test_sigkill_whole_worker_redelivers_after_lease(app_env):
    tmp_path, client = app_env
    marker = tmp_path / "m.txt"
    worker = WorkerProcess(tmp_path, "wapp", "-c", "1", LEASE="2")
    res = client.send_task("wapp.sleepy_late", (1, str(marker)))
    wait_for(lambda: marker.exists(), 10)
    worker.kill_all()
    worker.stop()
    with WorkerProcess(tmp_path, "wapp", "-c", "1", LEASE="2"):
        assert res.get(timeout=20) == 1
    assert marker.read_text().count("start") == 2


def test_workers_and_producers_share_one_file(app_env):
    """Two workers (2 processes each) and the client: every task runs exactly once."""
    tmp_path, client = app_env
    out = tmp_path / "runs.txt"
    with WorkerProcess(tmp_path, "wapp", "-c", "2", "-n", "w1@%h"), \
            WorkerProcess(tmp_path, "wapp", "-c", "2", "-n", "w2@%h"):
        results = client.tasks["wapp.record"].apply_many([(str(out), i) for i in range(600)]) \
            if "wapp.record" in client.tasks else [client.send_task("wapp.record", (str(out), i)) for i in range(600)]
        from celeriac.result import ResultSet
        assert ResultSet(results, app=client).join(timeout=60) == list(range(600))
    lines = out.read_text().split()
    assert len(lines) == 600 and len(set(lines)) == 600


@pytest.mark.parametrize("args, expected", [
    (["-A", "no_such_module_xyz", "worker"], "The module no_such_module_xyz was not found"),
    (["-A", "wapp", "-b", "bogus://x", "worker"], "Unsupported broker URL 'bogus://x'"),
    (["-A", "wapp", "-b", "sqlite://", "worker"], "names no file"),
    (["-A", "wapp", "-b", "redis://127.0.0.1:1/0", "worker"], "127.0.0.1:1"),
])
def test_cli_errors_are_one_clear_line(app_env, args, expected):
    tmp_path, _ = app_env
    out = run_cli(tmp_path, *args, timeout=30)
    assert out.returncode != 0
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


def test_cli_call_result_purge(app_env):
    tmp_path, client = app_env
    sent = run_cli(tmp_path, "-A", "wapp", "call", "wapp.add", "--args", "[2, 3]")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    with WorkerProcess(tmp_path, "wapp", "-P", "solo"):
        assert client.AsyncResult(task_id).get(timeout=10) == 5
    shown = run_cli(tmp_path, "-A", "wapp", "result", task_id)
    assert shown.stdout.strip() == "SUCCESS: 5"
    for _ in range(3):
        run_cli(tmp_path, "-A", "wapp", "call", "wapp.add", "--args", "[1, 1]")
    purged = run_cli(tmp_path, "-A", "wapp", "purge", "-f")
    assert purged.stdout.strip() == "Purged 3 messages from 1 known task queue."
    assert client.broker.size("celery") == 0


def test_python_dash_m_help_lists_every_flag(tmp_path: Path):
    out = run_cli(tmp_path, "worker", "--help")
    for flag in ("--loglevel", "--concurrency", "--pool", "--queues", "--hostname", "--autoscale",
                 "--time-limit", "--soft-time-limit", "--max-tasks-per-child", "-O", "--beat"):
        assert flag in out.stdout
    assert sys.executable
