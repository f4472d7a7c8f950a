"""Remote control on Redis: our workers and clients, the pidbox bytes on the wire, and
the real ``celery`` CLI / worker (from a separate venv) talking to ours and back."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import WorkerProcess, delete_prefixed, wait_for, write

from celeriac import Celery
from celeriac.exceptions import TaskRevokedError

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")
CELERY_BIN = Path("celery")  # set by the celery_bin fixture to the shared .venv-celery
HOST = socket.gethostname()
W1 = f"w1@{HOST}"
SEP = "\x06\x16"

APP = """
import time
from celeriac import Celery
app = Celery('rapp', broker={url!r}, backend={url!r})
app.conf.broker_transport_options = {{'global_keyprefix': {prefix!r}}}
app.conf.result_backend_transport_options = {{'global_keyprefix': {prefix!r}}}

@app.task
def add(x, y):
    return x + y

@app.task
def long(seconds, marker=None):
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

CELERY_APP = """
from celery import Celery
app = Celery('rapp', broker={url!r}, backend={url!r})
app.conf.broker_transport_options = {{'global_keyprefix': {prefix!r}}}
app.conf.result_backend_transport_options = {{'global_keyprefix': {prefix!r}}}
app.conf.worker_hijack_root_logger = False

@app.task(name='rapp.add')
def add(x, y):
    return x + y
"""


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def env(tmp_path: Path, r: redis.Redis):
    prefix = f"tc{uuid.uuid4().hex[:10]}:"
    write(tmp_path / "rapp.py", APP.format(url=REDIS_URL, prefix=prefix))
    client = Celery("rapp", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    client.conf.broker_transport_options = {"global_keyprefix": prefix}
    client.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    yield tmp_path, client, prefix
    client.close()
    delete_prefixed(r, prefix)


def node(client: Celery, command: str = "stats", name: str = W1, **kw):
    """One node's reply, addressed to it: returns as soon as it answers."""
    return (getattr(client.control.inspect(destination=[name], timeout=10), command)(**kw) or {}).get(name)


def test_ping_inspect_and_stats_on_redis(env):
    tmp_path, client, _ = env
    with WorkerProcess(tmp_path, "rapp", "-c", "2", "-n", "w1@%h"):
        assert wait_for(lambda: client.control.ping(timeout=2), 20) == [{W1: {"ok": "pong"}}]
        assert node(client, "registered") == ["rapp.add", "rapp.long", "rapp.record"]
        assert client.send_task("rapp.add", (2, 3)).get(timeout=20) == 5
        stats = wait_for(lambda: (s := node(client)) and s["total"].get("rapp.add") == 1 and s, 20,
                         message="stats")
        assert stats["broker"]["transport"] == "redis" and stats["broker"]["port"] == 6379
        assert len(stats["pool"]["processes"]) == 2


def test_revoke_and_terminate_on_redis(env):
    tmp_path, client, prefix = env
    marker, out = tmp_path / "m", tmp_path / "out"
    with WorkerProcess(tmp_path, "rapp", "-c", "1", "-n", "w1@%h"):
        later = client.send_task("rapp.record", (str(out), 1), countdown=2)
        later.revoke()
        res = client.send_task("rapp.long", (60, str(marker)))
        wait_for(lambda: marker.exists(), 30, message="long task started")
        client.control.revoke(res.id, terminate=True, signal="SIGKILL")
        for x in (later, res):
            wait_for(lambda x=x: x.state == "REVOKED", 30, message="REVOKED")
        with pytest.raises(TaskRevokedError):
            res.get(timeout=5)
        assert client.send_task("rapp.add", (1, 1)).get(timeout=20) == 2
        assert not out.exists()


def test_revocation_survives_a_restart_on_redis(env, r):
    tmp_path, client, prefix = env
    out = tmp_path / "out"
    tid = str(uuid.uuid4())
    client.control.revoke(tid)  # no worker runs: only the store keeps it
    assert r.zscore(f"{prefix}celeriac.revoked", tid) > time.time() + 3000
    with WorkerProcess(tmp_path, "rapp", "-c", "1", "-n", "w1@%h"):
        res = client.send_task("rapp.record", (str(out), 1), task_id=tid)
        wait_for(lambda: res.state == "REVOKED", 30, message="REVOKED")
        assert tid in node(client, "revoked")
    assert not out.exists()


def test_pidbox_bytes_on_the_wire(env, r):
    """A request and its reply exactly as kombu lays them out (celery-wire.md 5.4)."""
    tmp_path, client, prefix = env
    with WorkerProcess(tmp_path, "rapp", "-P", "solo", "-n", "w1@%h"):
        wait_for(lambda: client.control.ping(timeout=1), 20, message="ping")
        oid = str(uuid.uuid4())
        reply_queue = f"{oid}.reply.celery.pidbox"
        r.sadd(f"{prefix}_kombu.binding.reply.celery.pidbox", f"{oid}{SEP}{SEP}{reply_queue}")
        body = {"method": "ping", "arguments": {}, "destination": None, "pattern": None, "matcher": None,
                "ticket": "t-1", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": oid}}
        request = {"body": base64.b64encode(json.dumps(body).encode()).decode(),
                   "content-encoding": "utf-8", "content-type": "application/json",
                   "headers": {"clock": 1, "expires": time.time() + 5},
                   "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox",
                                                                         "routing_key": ""},
                                  "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
        assert r.publish(f"{prefix}/0.celery.pidbox", json.dumps(request)) >= 1
        got = r.brpop([f"{prefix}{reply_queue}"], timeout=5)
        assert got is not None
        env_ = json.loads(got[1])
        assert json.loads(base64.b64decode(env_["body"])) == {W1: {"ok": "pong"}}
        assert env_["headers"]["ticket"] == "t-1" and isinstance(env_["headers"]["clock"], int)
        props = env_["properties"]
        assert props["delivery_info"] == {"exchange": "reply.celery.pidbox", "routing_key": oid}
        assert props["body_encoding"] == "base64" and props["delivery_mode"] == 1
        assert env_["content-type"] == "application/json"
        # an expired request is dropped, not answered
        request["headers"]["expires"] = time.time() - 1
        r.publish(f"{prefix}/0.celery.pidbox", json.dumps(request))
        assert r.brpop([f"{prefix}{reply_queue}"], timeout=1.5) is None
        # our client binds its reply queue for the call and removes it afterwards
        assert client.control.ping(timeout=1)
        members = r.smembers(f"{prefix}_kombu.binding.reply.celery.pidbox")
        assert members == {f"{oid}{SEP}{SEP}{reply_queue}".encode()}


def _celery(tmp_path: Path, prefix: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cdir = tmp_path / "celeryside"
    write(cdir / "capp.py", CELERY_APP.format(url=REDIS_URL, prefix=prefix))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(cdir)
    return subprocess.run([str(CELERY_BIN), "-A", "capp", *args], cwd=cdir, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def celery_bin(celery_venv: Path) -> Path:
    global CELERY_BIN
    CELERY_BIN = celery_venv / "bin" / "celery"
    return CELERY_BIN


def test_real_celery_cli_sees_our_worker(env, celery_bin):
    tmp_path, client, prefix = env
    with WorkerProcess(tmp_path, "rapp", "-c", "1", "-n", "w1@%h"):
        out = _celery(tmp_path, prefix, "inspect", "ping")
        assert out.returncode == 0, out.stderr
        assert f"->  {W1}: OK\n        pong\n\n1 node online." in out.stdout
        out = _celery(tmp_path, prefix, "status")
        assert out.returncode == 0 and "1 node online." in out.stdout
        out = _celery(tmp_path, prefix, "inspect", "registered", "--json")
        assert json.loads(out.stdout) == {W1: ["rapp.add", "rapp.long", "rapp.record"]}
        out = _celery(tmp_path, prefix, "inspect", "stats", "--json")
        stats = json.loads(out.stdout)[W1]
        assert stats["pool"]["max-concurrency"] == 1 and "total" in stats
        for command in ("active", "reserved", "scheduled", "revoked", "active_queues", "conf"):
            out = _celery(tmp_path, prefix, "inspect", command, "--json")
            assert out.returncode == 0 and W1 in json.loads(out.stdout), (command, out.stderr)
        tid = str(uuid.uuid4())
        out = _celery(tmp_path, prefix, "control", "revoke", tid)
        assert out.returncode == 0 and f"tasks {tid} flagged as revoked" in out.stdout
        assert tid in node(client, "revoked")
        out = _celery(tmp_path, prefix, "control", "rate_limit", "rapp.add", "7/m")
        assert "new rate limit set successfully" in out.stdout
        assert "rapp.add [rate_limit=7/m]" in node(client, "registered")
        # and a Celery client's task runs on our worker
        code = ("from capp import app; r = app.send_task('rapp.add', (20, 22)); "
                "print(r.get(timeout=30))")
        out = _celery_python(tmp_path, prefix, code)
        assert out.stdout.strip() == "42", out.stderr


def _celery_python(tmp_path: Path, prefix: str, code: str) -> subprocess.CompletedProcess[str]:
    _celery(tmp_path, prefix, "--version")  # writes the app module, skips without the venv
    cdir = tmp_path / "celeryside"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(cdir)
    return subprocess.run([str(CELERY_BIN.parent / "python"), "-c", code], cwd=cdir, env=env,
                          capture_output=True, text=True, timeout=60)


def test_our_control_reaches_a_real_celery_worker(env, celery_bin):
    tmp_path, client, prefix = env
    _celery(tmp_path, prefix, "--version")
    cdir = tmp_path / "celeryside"
    penv = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    penv["PYTHONPATH"] = str(cdir)
    log = open(tmp_path / "celery-worker.log", "w")
    proc = subprocess.Popen([str(CELERY_BIN), "-A", "capp", "worker", "-P", "solo", "-n", "cw@%h",
                             "--without-mingle", "--without-gossip"], cwd=cdir, env=penv,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        name = f"cw@{HOST}"
        pongs = wait_for(lambda: client.control.ping(timeout=1), 60, interval=0.5, message="celery worker pong")
        assert pongs == [{name: {"ok": "pong"}}]
        registered = node(client, "registered", name)
        assert registered and "rapp.add" in registered
        assert client.send_task("rapp.add", (1, 2)).get(timeout=30) == 3
        client.control.shutdown(destination=[name])
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        log.close()
