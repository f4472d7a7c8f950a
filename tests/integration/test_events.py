"""Events (celery-wire.md section 4): real workers started through the CLI, received with
our ``app.events.Receiver``, with raw redis-py, with Celery's own ``celery events`` and
with Flower."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, _redis_up, _unavailable
from support import WorkerProcess, run_cli, stop_group, wait_for, write

from celeriac import Celery

APP = """
import os
from celeriac import Celery

app = Celery("evapp", broker=os.environ["EV_BROKER"])
if os.environ.get("EV_PREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["EV_PREFIX"]}


@app.task
def add(x, y):
    return x + y


@app.task
def boom():
    raise ValueError("kaput")


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def flaky(self):
    if self.request.retries < 1:
        raise self.retry(exc=KeyError("again"))
    return "ok"


@app.task
def sleepy(seconds):
    import time
    time.sleep(seconds)
    return seconds
"""

CELERY_APP = """
import os
from celery import Celery

app = Celery("evapp", broker=os.environ["EV_BROKER"])
app.conf.broker_transport_options = {"global_keyprefix": os.environ["EV_PREFIX"]}
"""


class Env:
    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.prefix = f"tev{uuid.uuid4().hex[:10]}:" if kind == "redis" else ""
        self.url = REDIS_URL if kind == "redis" else f"sqlite:///{tmp_path}/broker.db"
        write(tmp_path / "evapp.py", APP)
        self.apps: list[Celery] = []

    @property
    def env(self) -> dict[str, str]:
        return {"EV_BROKER": self.url, "EV_PREFIX": self.prefix}

    def app(self, **conf: Any) -> Celery:
        app = Celery("evapp", broker=self.url, set_as_current=False)
        if self.prefix:
            app.conf.broker_transport_options = {"global_keyprefix": self.prefix}
        for key, value in conf.items():
            setattr(app.conf, key, value)
        self.apps.append(app)
        return app

    def worker(self, *args: str) -> WorkerProcess:
        return WorkerProcess(self.tmp_path, "evapp", "-l", "info", *args, **self.env)

    def cleanup(self) -> None:
        for app in self.apps:
            app.close()
        if self.prefix:
            import redis
            r = redis.Redis.from_url(REDIS_URL)
            keys = list(r.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                r.delete(*keys)


@pytest.fixture(params=["sqlite", "redis"])
def ev(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "redis" and not _redis_up():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    env = Env(request.param, tmp_path)
    yield env
    env.cleanup()


@pytest.fixture
def sqlite_ev(tmp_path: Path) -> Iterator[Env]:
    env = Env("sqlite", tmp_path)
    yield env
    env.cleanup()


class Collector:
    """Our Receiver, capturing in a thread into ``events`` (subscribed before it returns)."""

    def __init__(self, app: Celery, wakeup: bool = True) -> None:
        self.events: list[dict[str, Any]] = []
        self.receiver = app.events.Receiver(handlers={"*": self.events.append})
        self.receiver.subscribe()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(wakeup,), daemon=True)
        self.thread.start()

    def _run(self, wakeup: bool) -> None:
        try:
            self.receiver.capture(wakeup=wakeup)
        except BaseException as exc:  # reported by the test, not by the thread
            self.error = exc

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == type_
                and all(e.get(k) == v for k, v in match.items())]

    def wait(self, type_: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        found = wait_for(lambda: self.of(type_, **match), timeout, message=f"{type_} {match}")
        return found[0]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(10)
        assert self.error is None, repr(self.error)


def _common(event: dict[str, Any], hostname: str) -> None:
    assert event["hostname"] == hostname
    assert isinstance(event["pid"], int) and isinstance(event["clock"], int)
    assert isinstance(event["timestamp"], float) and abs(event["timestamp"] - time.time()) < 120
    assert isinstance(event["utcoffset"], (int, float))


# -- worker and task events through our receiver ----------------------------------------

@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_and_task_events(ev: Env, pool: str) -> None:
    app = ev.app()
    hostname = f"ev-{pool}@testhost"
    col = Collector(app)
    try:
        with ev.worker("-E", "-P", pool, "-c", "2", "-n", hostname) as w:
            online = col.wait("worker-online", hostname=hostname)
            _common(online, hostname)
            for key in ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
                assert key in online, key
            assert online["freq"] == 2.0 and len(online["loadavg"]) == 3
            ok = app.send_task("evapp.add", (2, 3)).id
            bad = app.send_task("evapp.boom").id
            flaky = app.send_task("evapp.flaky").id
            succeeded = col.wait("task-succeeded", uuid=ok)
            assert succeeded["result"] == "5" and isinstance(succeeded["runtime"], float)
            _common(succeeded, hostname)
            received = col.wait("task-received", uuid=ok)
            assert received["name"] == "evapp.add" and received["args"] == "(2, 3)"
            assert received["kwargs"] == "{}" and received["retries"] == 0 and received["root_id"] == ok
            for key in ("parent_id", "eta", "expires"):
                assert key in received and received[key] is None
            col.wait("task-started", uuid=ok)
            failed = col.wait("task-failed", uuid=bad)
            assert failed["exception"] == "ValueError('kaput')" and "kaput" in failed["traceback"]
            retried = col.wait("task-retried", uuid=flaky)
            assert retried["exception"] == "KeyError('again')"
            col.wait("task-succeeded", uuid=flaky)
            assert len(col.of("task-received", uuid=flaky)) == 2
            beat = col.wait("worker-heartbeat", timeout=10, hostname=hostname, freq=2.0)
            _common(beat, hostname)
            wait_for(lambda: any(e.get("processed", 0) >= 4 for e in col.of("worker-heartbeat", hostname=hostname)),
                     15, message="a heartbeat counting the tasks")
            assert w.stop() == 0
        offline = col.wait("worker-offline", hostname=hostname)
        assert offline["processed"] >= 4
        # every task event came from the process that ran the task; worker events from the main one
        assert {e["pid"] for e in col.events if e["type"].startswith("worker-")} == {online["pid"]}
        if pool == "prefork":
            assert online["pid"] not in {e["pid"] for e in col.of("task-started")}
    finally:
        col.stop()


@pytest.mark.parametrize("pool", ["solo", "asyncio"])
def test_task_events_other_pools(sqlite_ev: Env, pool: str) -> None:
    app = sqlite_ev.app()
    col = Collector(app)
    try:
        with sqlite_ev.worker("-E", "-P", pool, "-n", f"ev-{pool}@testhost"):
            ok = app.send_task("evapp.add", (1, 1)).id
            bad = app.send_task("evapp.boom").id
            assert col.wait("task-succeeded", uuid=ok)["result"] == "2"
            col.wait("task-started", uuid=ok)
            assert col.wait("task-failed", uuid=bad)["exception"] == "ValueError('kaput')"
    finally:
        col.stop()


def test_no_task_events_without_E(ev: Env) -> None:
    app = ev.app()
    col = Collector(app)
    try:
        with ev.worker("-c", "1", "-n", "quiet@testhost") as w:
            col.wait("worker-online", hostname="quiet@testhost")  # worker events are always sent
            ids = [app.send_task("evapp.add", (i, i)).id for i in range(3)]
            wait_for(lambda: w.log().count("succeeded in") >= 3, 30, message="tasks done")
            col.wait("worker-heartbeat", timeout=10, hostname="quiet@testhost")
            time.sleep(0.5)
        assert ids and not [e for e in col.events if e["type"].startswith("task-")]
    finally:
        col.stop()


def test_enable_and_disable_events_at_run_time(ev: Env) -> None:
    app = ev.app()
    col = Collector(app)
    hostname = "toggle@testhost"
    try:
        with ev.worker("-c", "2", "-n", hostname) as w:
            col.wait("worker-online", hostname=hostname)
            before = app.send_task("evapp.add", (1, 2)).id
            wait_for(lambda: before in w.log() and "succeeded in" in w.log(), 30, message="first task")
            app.control.enable_events()
            assert app.control.ping(timeout=5)  # commands run in order: enable_events is done
            during = app.send_task("evapp.add", (3, 4)).id
            assert col.wait("task-succeeded", uuid=during)["result"] == "7"
            col.wait("task-received", uuid=during)
            app.control.disable_events()
            assert app.control.ping(timeout=5)
            after = app.send_task("evapp.add", (5, 6)).id
            wait_for(lambda: w.log().count("succeeded in") >= 3, 30, message="third task")
            time.sleep(0.5)
        task_ids = {e.get("uuid") for e in col.events if e["type"].startswith("task-")}
        assert during in task_ids and before not in task_ids and after not in task_ids
    finally:
        col.stop()


def test_worker_send_task_events_setting_and_heartbeat_command(sqlite_ev: Env, tmp_path: Path) -> None:
    write(tmp_path / "evconf.py", "from evapp import app, add\napp.conf.worker_send_task_events = True\n")
    app = sqlite_ev.app()
    with WorkerProcess(tmp_path, "evconf", "-c", "1", "-n", "conf@testhost", **sqlite_ev.env) as w:
        assert "task events: ON" in w.log()
        col = Collector(app)  # started after the worker: its wake-up asks for a heartbeat now
        try:
            beat = col.wait("worker-heartbeat", timeout=10, hostname="conf@testhost", freq=5)
            assert set(beat) >= {"sw_ident", "sw_ver", "sw_sys"} and "active" not in beat
            ok = app.send_task("evapp.add", (2, 2)).id
            col.wait("task-succeeded", uuid=ok)
        finally:
            col.stop()


def test_sqlite_events_are_written_only_while_someone_listens(sqlite_ev: Env, tmp_path: Path) -> None:
    import sqlite3
    app = sqlite_ev.app()

    def rows() -> int:
        with sqlite3.connect(tmp_path / "broker.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM celeriac_broadcast WHERE channel = 'celeryev'")
                       .fetchone()[0])

    with sqlite_ev.worker("-E", "-c", "1", "-n", "lonely@testhost") as w:
        first = app.send_task("evapp.add", (1, 1)).id
        wait_for(lambda: app.AsyncResult(first).ready(), 30, message="first task")
        time.sleep(2.5)  # a heartbeat is due meanwhile
        assert rows() == 0  # nobody listened: no event was written into the queue's file
        col = Collector(app)
        try:
            col.wait("worker-heartbeat", hostname="lonely@testhost")
            time.sleep(1.2)  # the pool processes look for listeners once a second
            second = app.send_task("evapp.add", (2, 2)).id
            assert col.wait("task-succeeded", uuid=second)["result"] == "4"
            assert not col.of("task-received", uuid=first)
        finally:
            col.stop()
        with sqlite3.connect(tmp_path / "broker.db") as db:
            assert db.execute("SELECT COUNT(*) FROM celeriac_event_listeners").fetchone()[0] == 0
        assert w.stop() == 0


def test_state_follows_the_events(ev: Env) -> None:
    app = ev.app()
    state = app.events.State()
    col = Collector(app)
    try:
        with ev.worker("-E", "-c", "1", "-n", "state@testhost"):
            col.wait("worker-online", hostname="state@testhost")
            ok = app.send_task("evapp.add", (2, 3)).id
            bad = app.send_task("evapp.boom").id
            col.wait("task-failed", uuid=bad)
            col.wait("task-succeeded", uuid=ok)
            for e in list(col.events):
                state.event(e)
            worker = state.workers["state@testhost"]
            assert worker.alive and [w.hostname for w in state.alive_workers()] == ["state@testhost"]
            assert state.tasks[ok].state == "SUCCESS" and state.tasks[ok].result == "5"
            assert state.tasks[ok].name == "evapp.add" and state.tasks[ok].worker is worker
            assert state.tasks[bad].state == "FAILURE"
        col.wait("worker-offline", hostname="state@testhost")
        state.event(col.of("worker-offline")[0])
        assert not state.workers["state@testhost"].alive
    finally:
        col.stop()


def test_task_sent_event(ev: Env) -> None:
    listener = ev.app()
    col = Collector(listener, wakeup=False)
    try:
        client = ev.app(task_send_sent_event=True)
        res = client.send_task("evapp.add", (2,), {"y": 3}, queue="elsewhere")
        sent = col.wait("task-sent", uuid=res.id)
        assert sent["name"] == "evapp.add" and sent["args"] == "(2,)" and sent["kwargs"] == "{'y': 3}"
        assert sent["queue"] == "elsewhere" and sent["routing_key"] == "elsewhere" and sent["exchange"] == ""
        assert sent["hostname"] == f"gen{os.getpid()}@{socket.gethostname()}"
        assert sent["retries"] == 0 and sent["root_id"] == res.id and sent["parent_id"] is None
    finally:
        col.stop()


def test_events_cli_dump(sqlite_ev: Env, tmp_path: Path) -> None:
    app = sqlite_ev.app()
    out: dict[str, subprocess.CompletedProcess[str]] = {}

    def watch() -> None:
        out["r"] = run_cli(tmp_path, "-A", "evapp", "events", "--dump", "--timeout", "12", timeout=60,
                           **sqlite_ev.env)

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(2.0)
    with sqlite_ev.worker("-E", "-c", "1", "-n", "cli@testhost"):
        ok = app.send_task("evapp.add", (20, 22)).id
        wait_for(lambda: app.AsyncResult(ok).ready(), 30, message="task done")
    t.join(60)
    text = out["r"].stdout
    assert out["r"].returncode == 0, out["r"].stderr
    assert "cli@testhost [" in text and "worker online" in text and "worker offline" in text
    assert f"task succeeded: evapp.add[{ok}]" in text and "result=42" in text


# -- the wire on Redis (celery-wire.md 4.1-4.4) ------------------------------------------

@pytest.fixture
def redis_ev(tmp_path: Path) -> Iterator[Env]:
    if not _redis_up():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    env = Env("redis", tmp_path)
    yield env
    env.cleanup()


def test_redis_wire(redis_ev: Env) -> None:
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    pubsub = r.pubsub()
    pubsub.psubscribe(f"{redis_ev.prefix}/{db}.celeryev/*")
    got: list[tuple[str, dict[str, Any], Any]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            m = pubsub.get_message(timeout=0.2)
            if m and m["type"] == "pmessage":
                env = json.loads(m["data"])
                got.append((m["channel"].decode(), env, json.loads(base64.b64decode(env["body"]))))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    app = redis_ev.app()
    try:
        hostname = "wire@testhost"
        with redis_ev.worker("-E", "-c", "1", "-n", hostname) as w:
            wait_for(lambda: any(c.endswith("/worker.online") for c, _, _ in got), 30, message="worker.online")
            ok = app.send_task("evapp.add", (2, 3)).id
            wait_for(lambda: any(isinstance(b, list) and any(e["type"] == "task-succeeded" for e in b)
                                 for _, _, b in got), 30, message="task-succeeded")
            wait_for(lambda: any(c.endswith("/worker.heartbeat") for c, _, _ in got), 10, message="heartbeat")
            w.stop()
        wait_for(lambda: any(c.endswith("/worker.offline") for c, _, _ in got), 10, message="worker.offline")
    finally:
        stop.set()
        t.join(5)
        pubsub.close()
    base = f"{redis_ev.prefix}/{db}.celeryev/"
    channels = {c for c, _, _ in got}
    assert {base + "worker.online", base + "worker.heartbeat", base + "task.multi",
            base + "worker.offline"} <= channels
    for channel, env, body in got:
        rk = channel[len(base):]
        assert set(env) == {"body", "content-encoding", "content-type", "headers", "properties"}
        assert env["content-type"] == "application/json" and env["content-encoding"] == "utf-8"
        assert env["headers"] == {"hostname": hostname}
        props = env["properties"]
        assert props["delivery_mode"] == 1 and props["body_encoding"] == "base64" and props["priority"] == 0
        assert props["delivery_info"] == {"exchange": "celeryev", "routing_key": rk}
        assert uuid.UUID(props["delivery_tag"])
        if rk == "task.multi":
            assert isinstance(body, list) and body
            for e in body:
                assert e["type"].startswith("task-")
                _common(e, hostname)
                assert list(e)[:4] == ["hostname", "utcoffset", "pid", "clock"]
                assert list(e)[-2:] == ["timestamp", "type"]
        else:
            assert isinstance(body, dict) and body["type"] == rk.replace(".", "-")
            _common(body, hostname)
            assert list(body) == ["hostname", "utcoffset", "pid", "clock", "freq", "active", "processed",
                                  "loadavg", "sw_ident", "sw_ver", "sw_sys", "timestamp", "type"]
            expected = (time.altzone if time.localtime().tm_isdst > 0 else time.timezone) / 3600
            assert body["utcoffset"] == expected
    task_events = [e for _, _, b in got if isinstance(b, list) for e in b if e["uuid"] == ok]
    assert [e["type"] for e in task_events] == ["task-received", "task-started", "task-succeeded"]
    assert list(task_events[0])[4:-2] == ["uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries",
                                          "eta", "expires"]
    assert list(task_events[1])[4:-2] == ["uuid"]
    assert list(task_events[2])[4:-2] == ["uuid", "result", "runtime"]


# -- Celery's own tooling ------------------------------------------------------------------

def _celery_env(tmp_path: Path, redis_ev: Env) -> tuple[Path, dict[str, str]]:
    celdir = tmp_path / "celery_side"
    write(celdir / "celapp.py", CELERY_APP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(celdir), PYTHONUNBUFFERED="1", **redis_ev.env)
    return celdir, env


def test_celery_events_dump_sees_our_worker(celery_venv: Path, redis_ev: Env, tmp_path: Path) -> None:
    celdir, env = _celery_env(tmp_path, redis_ev)
    log = open(tmp_path / "celery-events.log", "w")
    dumper = subprocess.Popen([str(celery_venv / "bin" / "celery"), "-A", "celapp", "events", "--dump"],
                              cwd=celdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = lambda: (tmp_path / "celery-events.log").read_text()  # noqa: E731
        wait_for(lambda: "starting capture" in text() or dumper.poll() is not None, 60, message="celery events")
        assert dumper.poll() is None, text()
        time.sleep(1.0)
        app = redis_ev.app()
        with redis_ev.worker("-E", "-c", "1", "-n", "dumped@testhost"):
            # pub/sub is at most once: send the task once the dumper is seen to listen
            wait_for(lambda: "dumped@testhost" in text(), 30, message="the dumper hears our worker")
            ok = app.send_task("evapp.add", (2, 3)).id
            wait_for(lambda: f"task succeeded: evapp.add({ok})" in text(), 30, message="task succeeded line")
            wait_for(lambda: "dumped@testhost" in text() and " heartbeat:" in text(), 10,
                     message="heartbeat line")
        wait_for(lambda: " shutdown:" in text(), 10, message="worker-offline line")
        assert "result=5" in text()
    finally:
        stop_group(dumper)
        log.close()


def test_celery_receiver_script_sees_our_events(celery_venv: Path, redis_ev: Env, tmp_path: Path) -> None:
    celdir, env = _celery_env(tmp_path, redis_ev)
    write(celdir / "recv.py", """
        import json, sys
        from celapp import app
        state = app.events.State()
        seen = []

        def on_event(event):
            state.event(event)
            seen.append(event["type"])
            print(json.dumps({"type": event["type"], "uuid": event.get("uuid"),
                              "hostname": event.get("hostname")}), flush=True)
            if "task-succeeded" in seen and "worker-heartbeat" in seen:
                alive = [w.hostname for w in state.alive_workers()]
                print("STATE", json.dumps({"alive": alive}), flush=True)
                recv.should_stop = True

        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": on_event})
            recv.capture(limit=None, timeout=60)
        tasks = {u: t.state for u, t in state.tasks.items()}
        print("TASKS", json.dumps(tasks), flush=True)
    """)
    log = open(tmp_path / "recv.log", "w")
    proc = subprocess.Popen([str(celery_venv / "bin" / "python"), "recv.py"], cwd=celdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: (tmp_path / "recv.log").read_text()  # noqa: E731
    try:
        time.sleep(3.0)
        app = redis_ev.app()
        with redis_ev.worker("-E", "-c", "1", "-n", "seen@testhost"):
            wait_for(lambda: "seen@testhost" in text() or proc.poll() is not None, 30,
                     message="Celery's receiver hears our worker")
            ok = app.send_task("evapp.add", (2, 3)).id
            proc.wait(60)
        assert proc.returncode == 0, text()
        lines = text().splitlines()
        alive = json.loads(next(line for line in lines if line.startswith("STATE "))[6:])["alive"]
        assert alive == ["seen@testhost"]
        tasks = json.loads(next(line for line in lines if line.startswith("TASKS "))[6:])
        assert tasks[ok] == "SUCCESS"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


# -- Flower ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def flower_venv(celery_venv: Path) -> Path:
    """The Celery virtualenv with Flower installed in it (installed on first use)."""
    import fcntl
    python = celery_venv / "bin" / "python"

    def ok() -> bool:
        return subprocess.run([str(python), "-c", "import flower"], capture_output=True, timeout=120).returncode == 0

    if ok():
        return celery_venv
    with open(str(celery_venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ok():
            try:
                done = subprocess.run([str(python), "-m", "pip", "install", "-q", "flower"], capture_output=True,
                                      text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _unavailable(f"cannot install Flower into {celery_venv}: {exc}")
            if done.returncode != 0 or not ok():
                _unavailable(f"cannot install Flower into {celery_venv}: {(done.stderr or done.stdout)[-800:]}")
    return celery_venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (OSError, ValueError):
        return None


def test_flower_sees_our_worker_and_tasks(flower_venv: Path, redis_ev: Env, tmp_path: Path) -> None:
    celdir, env = _celery_env(tmp_path, redis_ev)
    env["FLOWER_UNAUTHENTICATED_API"] = "1"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    app = redis_ev.app()
    log = open(tmp_path / "flower.log", "w")
    with redis_ev.worker("-E", "-c", "1", "-n", "flowered@testhost"):
        flower = subprocess.Popen([str(flower_venv / "bin" / "celery"), "-A", "celapp", "flower",
                                   f"--port={port}", "--address=127.0.0.1"], cwd=celdir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: _try(lambda: _get_json(f"{base}/api/tasks")) is not None or flower.poll() is not None,
                     60, message="Flower up")
            assert flower.poll() is None, (tmp_path / "flower.log").read_text()

            def dashboard(processed: int | None) -> Any:  # built from our worker events alone
                data = _try(lambda: _get_json(f"{base}/workers?json=1")["data"]) or []
                mine = [w for w in data if w["hostname"] == "flowered@testhost" and w["status"] is True]
                return mine[0] if mine and (processed is None or mine[0].get("processed") == processed) else None

            # pub/sub is at most once: send the tasks once Flower is seen to listen (the heartbeat
            # its start asks for, or a regular one)
            wait_for(lambda: dashboard(None), 30, message="worker on Flower's dashboard")
            ok = app.send_task("evapp.add", (2, 3)).id
            bad = app.send_task("evapp.boom").id
            tasks = wait_for(lambda: (lambda t: t if t and t.get(ok, {}).get("state") == "SUCCESS"
                                      and t.get(bad, {}).get("state") == "FAILURE" else None)(
                _try(lambda: _get_json(f"{base}/api/tasks"))), 30, message="tasks in Flower")
            assert tasks[ok]["worker"] == "flowered@testhost" and tasks[ok]["result"] == "5"
            assert tasks[bad]["exception"] == "ValueError('kaput')"

            def listed() -> Any:  # Flower asks the workers (stats, active_queues, registered, conf)
                workers = _try(lambda: _get_json(f"{base}/api/workers?refresh=1")) or {}
                info = workers.get("flowered@testhost") or {}
                total = (info.get("stats") or {}).get("total")
                return info if total == {"evapp.add": 1, "evapp.boom": 1} else None

            info = wait_for(listed, 30, interval=1.0, message="worker in Flower's /api/workers")
            assert "evapp.add" in info["registered"] and info["active_queues"][0]["name"] == "celery"
            row = wait_for(lambda: dashboard(2), 15, message="the tasks counted on Flower's dashboard")
            assert row["status"] is True and row["active"] == 0 and row["sw_ident"] == "celeriac"
        finally:
            stop_group(flower)
            log.close()
