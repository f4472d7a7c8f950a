"""Remote control against real workers on the embedded SQLite broker: ping, inspect,
revoke (before start, terminate, across restarts), shutdown, pool size, task limits, CLI."""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path

import pytest
from support import WorkerProcess, run_cli, wait_for, write

from celeriac import Celery
from celeriac.exceptions import SoftTimeLimitExceeded, TaskRevokedError

APP = """
import os, time
from celeriac import Celery
app = Celery('capp', broker='sqlite:///{db}')

@app.task
def add(x, y):
    return x + y

@app.task
def long(seconds, marker=None):
    if marker:
        with open(marker, 'a') as f:
            f.write('start\\n')
    time.sleep(seconds)
    if marker:
        with open(marker, 'a') as f:
            f.write('end\\n')
    return seconds

@app.task
def record(path, n):
    with open(path, 'a') as f:
        f.write(f'{{n}}\\n')
    return n

from celeriac.signals import task_revoked

@task_revoked.connect
def on_revoked(sender=None, request=None, terminated=None, signum=None, expired=None, **kwargs):
    with open(os.path.join(os.path.dirname(__file__), 'revoked.log'), 'a') as f:
        f.write(f'{{request.id}} {{sender.name}} {{terminated}} {{signum}}\\n')

@app.task
def stamp(path):
    with open(path, 'a') as f:
        f.write(f'{{time.time()}}\\n')
"""

HOST = socket.gethostname()
W1 = f"w1@{HOST}"


@pytest.fixture
def env(tmp_path: Path):
    db = tmp_path / "c.db"
    write(tmp_path / "capp.py", APP.format(db=db))
    client = Celery("capp", broker=f"sqlite:///{db}", set_as_current=False)
    yield tmp_path, client
    client.close()


def node(client: Celery, name: str = W1, timeout: float = 10.0, command: str = "stats", **kw):
    """One node's reply to an inspect command (None when it did not answer).  Addressed to
    that node, so the call returns as soon as it answers (generous timeout for busy CI)."""
    replies = getattr(client.control.inspect(destination=[name], timeout=timeout), command)(**kw) or {}
    return replies.get(name)


def started(marker: Path) -> bool:
    return marker.exists() and "start" in marker.read_text()


def test_ping_registered_stats_and_queues(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "capp", "-c", "2", "-n", "w1@%h"):
        assert wait_for(lambda: client.control.ping(), 20) == [{W1: {"ok": "pong"}}]  # seed 003
        assert client.control.ping(destination=[W1], timeout=5) == [{W1: {"ok": "pong"}}]
        assert client.control.ping(destination=["nobody@nowhere"], timeout=0.3) == []
        assert client.control.inspect(timeout=5).ping(destination=[W1]) == {W1: {"ok": "pong"}}
        registered = node(client, command="registered")
        assert registered == ["capp.add", "capp.long", "capp.record", "capp.stamp"]
        assert client.send_task("capp.add", (1, 2)).get(timeout=20) == 3
        assert client.send_task("capp.add", (2, 2)).get(timeout=20) == 4
        stats = wait_for(lambda: (s := node(client)) and s["total"].get("capp.add") == 2 and s,
                         30, message="stats with two adds")
        assert stats["pool"]["max-concurrency"] == 2
        assert len(stats["pool"]["processes"]) == 2
        assert isinstance(stats["pid"], int) and isinstance(stats["uptime"], int)
        assert stats["broker"]["transport"] == "sqlite"
        assert stats["prefetch_count"] == 2 * 4
        queues = node(client, command="active_queues")
        assert [q["name"] for q in queues] == ["celery"]
        assert node(client, command="scheduled") == []
        assert node(client, command="conf")["broker_url"].startswith("sqlite:///")
        replies = client.control.broadcast("no_such_command", reply=True)
        assert replies == [{W1: {"error": "No such method: no_such_command"}}]


def test_inspect_active_and_reserved(env):
    tmp_path, client = env
    marker = tmp_path / "m"
    # both queued before the worker starts, so that its first fetch leases both (sent to a
    # running idle worker, the first alone may be fetched before the second is published)
    first = client.send_task("capp.long", (30, str(marker)))
    second = client.send_task("capp.add", (5, 6))
    with WorkerProcess(tmp_path, "capp", "-c", "1", "--prefetch-multiplier", "2", "-n", "w1@%h"):
        wait_for(lambda: started(marker), 30, message="long task started")
        active = wait_for(lambda: node(client, command="active"), 20, message="active")
        assert [a["id"] for a in active] == [first.id]
        info = active[0]
        assert info["name"] == "capp.long" and info["args"] == [30, str(marker)]
        assert info["hostname"] == W1 and isinstance(info["worker_pid"], int)
        assert info["time_start"] and info["delivery_info"]["routing_key"] == "celery"
        safe = node(client, command="active", safe=True)
        assert safe[0]["args"] == repr((30, str(marker))) or safe[0]["args"].startswith("(30")
        reserved = wait_for(lambda: node(client, command="reserved"), 20, message="reserved")
        assert [r["id"] for r in reserved] == [second.id]
        assert reserved[0]["args"] == [5, 6] and reserved[0]["worker_pid"] is None
        client.control.revoke(first.id, terminate=True, signal="SIGKILL")
        assert second.get(timeout=30) == 11


def test_revoked_before_start_never_runs(env):
    tmp_path, client = env
    out = tmp_path / "out"
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h") as worker:
        # waiting in the broker (countdown) when revoked
        later = client.send_task("capp.record", (str(out), 1), countdown=2)
        later.revoke()
        # fetched by a busy process (prefetched behind a running task) when revoked
        busy = client.send_task("capp.long", (2,))
        queued = client.send_task("capp.record", (str(out), 2))
        time.sleep(0.5)
        client.control.revoke(queued.id)
        assert busy.get(timeout=30) == 2
        for res in (later, queued):
            wait_for(lambda r=res: r.state == "REVOKED", 30, message=f"{res.id} REVOKED")
            with pytest.raises(TaskRevokedError):
                res.get(timeout=5)
        assert client.send_task("capp.record", (str(out), 3)).get(timeout=20) == 3
        assert out.read_text() == "3\n"
        assert "Discarding revoked task" in worker.log() or "revoked" in worker.log()
        assert set(node(client, command="revoked")) >= {later.id, queued.id}
    lines = (tmp_path / "revoked.log").read_text().splitlines()
    assert sorted(lines) == sorted(f"{r.id} capp.record False None" for r in (later, queued))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_revoke_terminate_stops_a_running_task(env, sig):
    tmp_path, client = env
    marker = tmp_path / "m"
    with WorkerProcess(tmp_path, "capp", "-c", "2", "-n", "w1@%h", "-l", "info") as worker:
        before = wait_for(lambda: node(client), 20, message="stats")["pool"]["processes"]
        res = client.send_task("capp.long", (60, str(marker)))
        wait_for(lambda: started(marker), 30, message="long task started")
        client.control.revoke(res.id, terminate=True, signal=sig)
        wait_for(lambda: res.state == "REVOKED", 30, message="REVOKED")
        with pytest.raises(TaskRevokedError, match="terminated"):
            res.get(timeout=5)
        assert "end" not in marker.read_text()
        after = wait_for(lambda: (s := node(client)) and len(s["pool"]["processes"]) == 2 and s, 30,
                         message="pool back to two processes")["pool"]["processes"]
        assert len(set(after) - set(before)) == 1  # the killed process was replaced
        assert client.send_task("capp.add", (1, 1)).get(timeout=20) == 2
        assert "WorkerLostError" not in worker.log()
    signum = {"SIGTERM": 15, "SIGKILL": 9}[sig]
    assert (tmp_path / "revoked.log").read_text() == f"{res.id} capp.long True {signum}\n"


def test_terminate_via_async_result(env):
    tmp_path, client = env
    marker = tmp_path / "m"
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        res = client.send_task("capp.long", (60, str(marker)))
        wait_for(lambda: started(marker), 30, message="long task started")
        client.AsyncResult(res.id).revoke(terminate=True, signal="SIGKILL")
        wait_for(lambda: res.state == "REVOKED", 30, message="REVOKED")


def test_unknown_signal_is_a_clear_error(env):
    _, client = env
    with pytest.raises(ValueError, match="Unknown signal name: 'SIGNOPE'"):
        client.control.revoke("some-id", terminate=True, signal="SIGNOPE")
    with pytest.raises(ValueError, match="Unknown signal"):
        client.AsyncResult("some-id").revoke(terminate=True, signal="NOPE")
    assert client.broker.load_revoked() == []  # nothing was sent or stored


def test_revocation_survives_a_worker_restart(env):
    tmp_path, client = env
    out = tmp_path / "out"
    tid = str(uuid.uuid4())
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        client.control.revoke(tid)
        wait_for(lambda: tid in (node(client, command="revoked") or []), 20, message="revoked listed")
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        assert tid in node(client, command="revoked")
        res = client.send_task("capp.record", (str(out), 1), task_id=tid)
        wait_for(lambda: res.state == "REVOKED", 30, message="REVOKED after restart")
        assert client.send_task("capp.record", (str(out), 2)).get(timeout=20) == 2
    assert out.read_text() == "2\n"


def test_revoke_reaches_every_worker(env):
    tmp_path, client = env
    out = tmp_path / "out"
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"), \
            WorkerProcess(tmp_path, "capp", "-P", "threads", "-c", "2", "-n", "w2@%h"):
        pongs = client.control.ping(destination=[W1, f"w2@{HOST}"], timeout=10)  # both answer
        assert sorted(next(iter(p)) for p in pongs) == [W1, f"w2@{HOST}"]
        ids = [str(uuid.uuid4()) for _ in range(6)]
        client.control.revoke(ids)
        for name in (W1, f"w2@{HOST}"):
            wait_for(lambda n=name: set(ids) <= set(node(client, n, command="revoked") or ()), 20,
                     message=f"{name} lists the revoked ids")
        results = [client.send_task("capp.record", (str(out), i), task_id=t) for i, t in enumerate(ids)]
        for r in results:
            wait_for(lambda r=r: r.state == "REVOKED", 30, message="REVOKED")
        assert not out.exists()


def test_shutdown_stops_the_worker(env):
    tmp_path, client = env
    worker = WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h")
    try:
        assert client.control.ping(timeout=2)
        client.control.shutdown()
        assert worker.proc.wait(30) == 0
        assert "Got shutdown from remote" in worker.log()
    finally:
        worker.stop()


def test_pool_grow_and_shrink(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        assert len(wait_for(lambda: node(client), 20, message="stats")["pool"]["processes"]) == 1
        assert client.control.pool_grow(2, reply=True) == [{W1: {"ok": "pool will grow"}}]
        wait_for(lambda: len((node(client) or {"pool": {"processes": []}})["pool"]["processes"]) == 3,
                 30, message="three processes")
        assert node(client)["pool"]["max-concurrency"] == 3
        client.control.pool_shrink(2)
        wait_for(lambda: len((node(client) or {"pool": {"processes": []}})["pool"]["processes"]) == 1,
                 30, message="one process")
        assert client.send_task("capp.add", (2, 3)).get(timeout=20) == 5


def test_rate_limit_command_is_honoured(env):
    tmp_path, client = env
    stamps = tmp_path / "stamps"
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        reply = client.control.rate_limit("capp.stamp", "2/s", reply=True)
        assert reply == [{W1: {"ok": "new rate limit set successfully"}}]
        assert "capp.stamp [rate_limit=2/s]" in node(client, command="registered")
        results = [client.send_task("capp.stamp", (str(stamps),)) for _ in range(5)]
        for r in results:
            r.get(timeout=60)
        times = sorted(float(x) for x in stamps.read_text().split())
        assert times[-1] - times[0] >= 1.5  # 5 tasks at 2/s: at least 4 intervals of 0.5 s
        assert client.control.rate_limit("capp.nope", "1/s", reply=True) == [{W1: {"error": "unknown task"}}]
        with pytest.raises(Exception, match="Invalid rate_limit"):
            client.control.rate_limit("capp.stamp", "fast")


def test_time_limit_command_applies_to_new_tasks(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        reply = client.control.time_limit("capp.long", soft=1, hard=10, reply=True)
        assert reply == [{W1: {"ok": "time limits set successfully"}}]
        res = client.send_task("capp.long", (5,))
        with pytest.raises(SoftTimeLimitExceeded):
            res.get(timeout=30)


def test_threads_pool_inspect_and_revoke(env):
    tmp_path, client = env
    marker = tmp_path / "m"
    out = tmp_path / "out"
    with WorkerProcess(tmp_path, "capp", "-P", "threads", "-c", "2", "-n", "w1@%h"):
        res = client.send_task("capp.long", (3, str(marker)))
        wait_for(lambda: started(marker), 30, message="long task started")
        active = wait_for(lambda: node(client, command="active"), 20, message="active")
        assert [a["id"] for a in active] == [res.id]
        stats = node(client)
        assert stats["pool"]["max-concurrency"] == 2
        queued = client.send_task("capp.record", (str(out), 1), countdown=1)
        client.control.revoke(queued.id)
        wait_for(lambda: queued.state == "REVOKED", 30, message="REVOKED")
        assert client.control.pool_grow(1, reply=True)[0][W1]["error"].startswith("pool_grow is not supported")
        assert res.get(timeout=30) == 3


def test_cli_inspect_control_and_status(env):
    tmp_path, _ = env
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        out = run_cli(tmp_path, "-A", "capp", "inspect", "ping")
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"->  {W1}: OK\n        pong\n\n1 node online.\n"
        out = run_cli(tmp_path, "-A", "capp", "status")
        assert out.stdout == f"->  {W1}: OK\n\n1 node online.\n"
        out = run_cli(tmp_path, "-A", "capp", "inspect", "registered")
        assert f"->  {W1}: OK\n    * capp.add\n" in out.stdout
        out = run_cli(tmp_path, "-A", "capp", "inspect", "stats", "--json")
        assert '"prefetch_count": 4' in out.stdout
        out = run_cli(tmp_path, "-A", "capp", "control", "rate_limit", "capp.add", "5/s")
        assert out.stdout == f"->  {W1}: OK\n        new rate limit set successfully\n"
        out = run_cli(tmp_path, "-A", "capp", "control", "revoke", "id-1", "id-2")
        assert "tasks id-1, id-2 flagged as revoked" in out.stdout
        out = run_cli(tmp_path, "-A", "capp", "control", "revoke", "id-3", "--terminate", "--signal", "SIGBAD")
        assert out.returncode == 1 and "Unknown signal name: 'SIGBAD'" in out.stderr
        out = run_cli(tmp_path, "-A", "capp", "inspect", "revoked", "-d", W1, "-t", "3")
        assert re.search(r"\* id-1\n\s+\* id-2", out.stdout)
        out = run_cli(tmp_path, "-A", "capp", "control", "shutdown")
        assert out.returncode == 0 and "shutdown" in out.stdout
    out = run_cli(tmp_path, "-A", "capp", "inspect", "ping", "-t", "0.5")
    assert out.returncode == 69
    assert "Error: No nodes replied within time constraint" in out.stderr


def test_result_set_revoke_and_revoke_wait(env):
    from celeriac.result import ResultSet
    tmp_path, client = env
    out = tmp_path / "out"
    with WorkerProcess(tmp_path, "capp", "-c", "1", "-n", "w1@%h"):
        wait_for(lambda: node(client, command="ping"), 20, message="ping")
        results = [client.send_task("capp.record", (str(out), i), countdown=2) for i in range(3)]
        ResultSet(results, app=client).revoke()
        for r in results:
            wait_for(lambda r=r: r.state == "REVOKED", 30, message="REVOKED")
        res = client.send_task("capp.record", (str(out), 9), countdown=2)
        res.revoke(wait=True, timeout=1)  # collects the workers' replies, as Celery does
        wait_for(lambda: res.state == "REVOKED", 30, message="REVOKED")
    assert not out.exists()
