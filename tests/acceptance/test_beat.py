"""Beat with real processes: ``celeriac beat`` and ``worker -B`` as subprocesses, on SQLite and Redis.

* a 1-second schedule run by beat and executed by a worker;
* three beats against one broker: each tick sent once; the leader killed with
  SIGKILL, another takes over within the documented bound, with no missed and
  no doubled tick (checked through the deterministic task id of every tick);
* ``celeriac schedule add/list/disable/enable/remove`` changing a running beat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, _redis_up
from support import WorkerProcess, env_for, run_cli, wait_for, write

from celeriac import Celery
from celeriac.beat import store_for_app, tick_task_id
from celeriac.beat.ticks import SECOND

pytestmark = pytest.mark.slow

LEASE = 2.0
TAKEOVER_BOUND = LEASE + min(1.0, LEASE / 3)  # what the scheduler documents
SLACK = 2.5  # two shared cores: process start-up and scheduling jitter


class BeatProcess:
    """``celeriac -A <app> beat -l info ...`` as a subprocess, its log in a file."""

    def __init__(self, project: Path, app: str, *args: str, ready: bool = True) -> None:
        self.log_path = project / f"beat-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", app, "beat", "-l", "info", *args]
        self.proc = subprocess.Popen(cmd, cwd=project, env=env_for(project), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if ready:
            wait_for(lambda: "beat: Starting..." in self.log() or self.proc.poll() is not None, 60,
                     message="beat started")
            if self.proc.poll() is not None:
                raise AssertionError(f"beat exited early ({self.proc.returncode}):\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    if not _redis_up():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield prefix
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


def write_app(project: Path, broker: str, schedule: str = "{'tick': {'task': 'tasks.tick', 'schedule': 1.0}}",
              options: dict[str, Any] | None = None) -> None:
    write(project / "tasks.py", f"""
        import os, time
        from celeriac import Celery
        app = Celery('tasks', broker={broker!r}, broker_transport_options={options or {}!r})
        app.conf.beat_lease_seconds = {LEASE}
        app.conf.beat_schedule = {schedule}

        @app.task
        def tick(label='tick'):
            with open(os.path.join({str(project)!r}, 'runs.txt'), 'a') as f:
                f.write(f"{{time.time()}} {{tick.request.id}} {{label}}\\n")
    """)


def client(broker: str, options: dict[str, Any] | None = None) -> Celery:
    return Celery("client", broker=broker, broker_transport_options=options or {}, set_as_current=False)


def drain(app: Celery, queue: str = "celery") -> list[str]:
    """Task ids of every message waiting in ``queue`` (taken off the queue)."""
    out: list[str] = []
    while True:
        batch = app.broker.fetch([queue], 1000, 0.05, "test-reader")
        if not batch:
            return out
        app.broker.ack(batch)
        out += [d.envelope.headers["id"] for d in batch]


def runs(project: Path) -> list[list[str]]:
    path = project / "runs.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# -- a 1-second schedule, really running -------------------------------------------------


def test_beat_and_worker_run_a_one_second_schedule(project: Path):
    write_app(project, f"sqlite:///{project}/broker.db")
    with WorkerProcess(project, "tasks", "-l", "info", "-c", "1", "-P", "threads") as worker:
        beat = BeatProcess(project, "tasks")
        try:
            started = time.monotonic()
            wait_for(lambda: len(runs(project)) >= 5, 60, message="5 runs of the 1 s schedule")
            elapsed = time.monotonic() - started
            beat.stop()
            log = beat.log()
        finally:
            beat.stop()
        done = runs(project)
        ids = [r[1] for r in done]
        assert len(ids) == len(set(ids))
        assert elapsed < 5 + SLACK + 3
        gaps = [float(b[0]) - float(a[0]) for a, b in zip(done, done[1:], strict=False)]
        assert all(0.3 < g < 2.5 for g in gaps[:4]), gaps  # one per second
        assert "celeriac beat v" in log and "Configuration ->" in log
        assert log.count("Scheduler: Sending due task tick (tasks.tick)") >= 5
        assert worker.stop() == 0


def test_worker_with_embedded_beat(project: Path):
    write_app(project, f"sqlite:///{project}/broker.db")
    with WorkerProcess(project, "tasks", "-B", "-l", "info", "-c", "1", "-P", "threads") as worker:
        wait_for(lambda: len(runs(project)) >= 3, 60, message="3 runs from worker -B")
        assert "Scheduler: Sending due task tick (tasks.tick)" in worker.log()
        assert worker.stop() == 0
    ids = [r[1] for r in runs(project)]
    assert len(ids) == len(set(ids))


# -- high availability -----------------------------------------------------------------


def check_ha(project: Path, broker: str, options: dict[str, Any] | None = None) -> None:
    write_app(project, broker, options=options)
    reader = client(broker, options)
    store = store_for_app(reader)
    beats = [BeatProcess(project, "tasks") for _ in range(3)]
    try:
        sent: list[str] = []
        wait_for(lambda: store.leader(int(time.time() * SECOND)), 30, message="a leader")
        time.sleep(6)
        sent += drain(reader)
        holder = store.leader(int(time.time() * SECOND))
        assert holder is not None
        leader = next(b for b in beats if f":{b.pid}:" in holder[0])
        others = [b for b in beats if b is not leader]
        assert "holds the leader lease" in leader.log()
        for b in others:
            assert "standing by" in b.log() and "Sending due task" not in b.log()
        leader.kill()
        killed = time.monotonic()

        def new_leader() -> Any:
            h = store.leader(int(time.time() * SECOND))
            return h if h and h[0] != holder[0] else None

        new = wait_for(new_leader, TAKEOVER_BOUND + SLACK + 10, interval=0.02, message="a new leader")
        took = time.monotonic() - killed
        print(f"takeover after SIGKILL: {took:.2f}s (bound {TAKEOVER_BOUND:.2f}s)")
        assert took <= TAKEOVER_BOUND + SLACK, f"takeover took {took:.2f}s"
        successor = next(b for b in others if f":{b.pid}:" in new[0])
        time.sleep(4)
        for b in others:
            b.stop()
        sent += drain(reader)
        entry = store.get("tick")
        assert entry is not None and entry.last_run is not None and entry.pending_tick is None
        expected = [tick_task_id("tick", "tasks.tick", entry.last_run - k * SECOND)
                    for k in range(entry.total_run_count)]
        assert len(sent) == len(set(sent)), "a tick was sent twice"
        assert sorted(sent) == sorted(expected), "ticks missing or extra"
        assert entry.total_run_count >= 9  # ~6 s before the kill, ~2-3 s takeover, 4 s after
        assert "Sending due task" in successor.log()
    finally:
        for b in beats:
            b.stop()
        store.close()
        reader.close()


def test_three_beats_on_sqlite_send_each_tick_once_and_survive_the_leader_being_killed(project: Path):
    check_ha(project, f"sqlite:///{project}/broker.db")


def test_three_beats_on_redis_send_each_tick_once_and_survive_the_leader_being_killed(project: Path,
                                                                                      redis_prefix: str):
    check_ha(project, REDIS_URL, {"global_keyprefix": redis_prefix})


# -- the schedule CLI against a running beat -----------------------------------------------


def test_schedule_cli_changes_a_running_beat(project: Path):
    broker = f"sqlite:///{project}/broker.db"
    write_app(project, broker, schedule="{}")
    reader = client(broker)
    beat = BeatProcess(project, "tasks")
    try:
        r = run_cli(project, "-A", "tasks", "schedule", "add", "dyn", "tasks.tick", "--every", "1",
                    "--args", '["dyn"]')
        assert r.returncode == 0, r.stderr
        assert "Added dyn: tasks.tick <freq: 1.00 second>" in r.stdout
        got: list[str] = []
        wait_for(lambda: got.extend(drain(reader)) or len(got) >= 2, 30, message="dyn sent twice")
        listed = run_cli(project, "-A", "tasks", "schedule", "list")
        assert listed.returncode == 0 and "dyn\tenabled\ttasks.tick\t<freq: 1.00 second>" in listed.stdout
        assert run_cli(project, "-A", "tasks", "schedule", "disable", "dyn").returncode == 0
        time.sleep(1.5)  # a pass in flight may still send one
        drain(reader)
        time.sleep(3)
        assert drain(reader) == []
        assert "dyn\tdisabled" in run_cli(project, "-A", "tasks", "schedule", "list").stdout
        assert run_cli(project, "-A", "tasks", "schedule", "enable", "dyn").returncode == 0
        wait_for(lambda: drain(reader), 30, message="dyn sent again after enable")
        r = run_cli(project, "-A", "tasks", "schedule", "add", "dyn", "tasks.tick", "--every", "1",
                    "--queue", "other", "--replace")
        assert r.returncode == 0 and "Replaced dyn" in r.stdout, r.stderr
        wait_for(lambda: drain(reader, "other"), 30, message="dyn sent to the new queue")
        assert run_cli(project, "-A", "tasks", "schedule", "remove", "dyn").returncode == 0
        time.sleep(1.5)
        drain(reader, "other")
        time.sleep(3)
        assert drain(reader, "other") == [] and drain(reader) == []
        missing = run_cli(project, "-A", "tasks", "schedule", "remove", "dyn")
        assert missing.returncode == 1 and "No schedule entry named 'dyn'" in missing.stderr
        assert beat.proc.poll() is None  # never restarted
        assert beat.stop() == 0
        assert "Sending due task dyn (tasks.tick)" in beat.log()
    finally:
        beat.stop()
        reader.close()


def test_schedule_add_rejects_bad_input(project: Path):
    write_app(project, f"sqlite:///{project}/broker.db", schedule="{}")
    r = run_cli(project, "-A", "tasks", "schedule", "add", "x", "tasks.tick", "--cron", "61 * * * *")
    assert r.returncode == 1 and "minute='61'" in r.stderr and "out of range" in r.stderr
    r = run_cli(project, "-A", "tasks", "schedule", "add", "x", "tasks.tick")
    assert r.returncode != 0 and "exactly one of --every, --cron and --solar" in r.stderr
    r = run_cli(project, "-A", "tasks", "schedule", "add", "x", "tasks.tick", "--cron", "0 9 * * mon-fri",
                "--tz", "Europe/Moscow")
    assert r.returncode == 0 and "(m/h/dM/MY/d)" in r.stdout, r.stderr
    assert "x\tenabled" in run_cli(project, "-A", "tasks", "schedule", "list").stdout


def test_beat_fails_clearly_on_a_bad_entry_and_maps_the_django_scheduler(project: Path):
    write_app(project, f"sqlite:///{project}/broker.db",
              schedule="{'broken': {'task': 'tasks.tick', 'schedule': 'hourly'}}")
    r = run_cli(project, "-A", "tasks", "beat", "-l", "info", timeout=60)
    assert r.returncode == 1
    assert "Configuration error: beat_schedule entry 'broken': schedule must be seconds" in r.stderr
    write_app(project, f"sqlite:///{project}/broker.db",
              schedule="{'ghost': {'task': 'nowhere.ghost', 'schedule': 1.0}}")
    reader = client(f"sqlite:///{project}/broker.db")
    beat = BeatProcess(project, "tasks", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
                       "-s", str(project / "celerybeat-schedule"))
    try:
        wait_for(lambda: drain(reader), 30, message="the unregistered task sent anyway")
        log = beat.log()
        assert "django_celery_beat.schedulers:DatabaseScheduler belongs to another package" in log
        assert "'ghost' names task 'nowhere.ghost', which is not registered" in log
        assert beat.stop() == 0
    finally:
        beat.stop()
        reader.close()
