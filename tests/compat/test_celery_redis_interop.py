"""Wire compatibility with the real Celery over Redis (celery-wire.md §9).

Celery runs from its own virtualenv (``.venv-celery`` in the repository root, made on
first use with ``pip install 'celery[redis]>=5.3'``; ``CELERIAC_CELERY_VENV`` names
another one).  Both sides load ``interop_app.py`` — Celery's or ours by
``INTEROP_IMPL`` — with the same task names, broker URL, key prefix and queue.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from interop_support import import_as_celeriac
from support import ROOT, WorkerProcess, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(900)]

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")
COMPAT_DIR = Path(__file__).resolve().parent


# -- per-test isolation -------------------------------------------------------------------

@pytest.fixture
def interop(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for both sides: a unique key prefix and queue; keys deleted afterwards."""
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"ti{uuid.uuid4().hex[:10]}:"
    env = {"INTEROP_BROKER": REDIS_URL, "INTEROP_PREFIX": prefix, "INTEROP_QUEUE": f"q{uuid.uuid4().hex[:8]}",
           "PYTHONPATH": os.pathsep.join([str(COMPAT_DIR), str(ROOT)]), "PYTHONUNBUFFERED": "1"}
    yield env
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def celeriac_app(interop: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """interop_app imported here, as celeriac, with this test's settings."""
    yield from import_as_celeriac("interop_app", interop, monkeypatch)


def celeriac_worker(tmp_path: Path, interop: dict[str, str], *args: str) -> WorkerProcess:
    return WorkerProcess(tmp_path, "interop_app", "-P", "threads", "-c", "4", "--loglevel=info", *args,
                         INTEROP_IMPL="celeriac", **interop)


class CeleryWorker:
    """``celery -A interop_app worker`` from the Celery virtualenv, its log in a file."""

    def __init__(self, venv: Path, tmp_path: Path, interop: dict[str, str], *args: str) -> None:
        self.log_path = tmp_path / f"celery-worker-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        env = {**os.environ, **interop, "INTEROP_IMPL": "celery", "PYTHONPATH": str(COMPAT_DIR)}
        cmd = [str(venv / "bin" / "celery"), "-A", "interop_app", "worker", "-l", "info", "-P", "threads",
               "-c", "4", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-n", f"celery-{uuid.uuid4().hex[:6]}@%h", *args]
        self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: " ready." in self.log() or self.proc.poll() is not None, 120,
                 message="the Celery worker to be ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"the Celery worker exited ({self.proc.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # warm shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> CeleryWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_celery_client(venv: Path, interop: dict[str, str], tmp_path: Path, code: str) -> Any:
    """Run ``code`` with Celery's interop_app imported as ``m``; it prints one JSON line."""
    env = {**os.environ, **interop, "INTEROP_IMPL": "celery", "PYTHONPATH": str(COMPAT_DIR)}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import interop_app as m, json\n" + code],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the Celery client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 1. Celery client -> celeriac worker -----------------------------------------------

def test_celery_client_celeriac_worker(celery_venv: Path, interop: dict[str, str], tmp_path: Path) -> None:
    with celeriac_worker(tmp_path, interop) as worker:
        out = run_celery_client(celery_venv, interop, tmp_path, """
r_add, r_who, r_boom = m.add.delay(2, 3), m.whoami.delay(), m.boom.delay("kaput")
out = {"add": r_add.get(timeout=60), "who": r_who.get(timeout=60)}
try:
    r_boom.get(timeout=60)
    out["boom"] = None
except Exception as exc:
    out["boom"] = [type(exc).__name__, str(exc)]
out["boom_state"] = r_boom.state
out["add_meta"] = {k: v for k, v in m.app.backend.get_task_meta(r_add.id).items() if k != "date_done"}
out["add_id"] = r_add.id
print(json.dumps(out))
""")
        log = worker.log()
    assert out["add"] == 5
    assert out["who"] == "celeriac"
    assert out["boom"] == ["ValueError", "kaput"]
    assert out["boom_state"] == "FAILURE"
    assert out["add_meta"] == {"status": "SUCCESS", "result": 5, "traceback": None, "children": [],
                               "task_id": out["add_id"]}
    assert "interop.add" in log


# -- 2. celeriac client -> Celery worker -----------------------------------------------

def test_celeriac_client_celery_worker(celery_venv: Path, interop: dict[str, str], tmp_path: Path,
                                       celeriac_app: ModuleType) -> None:
    m = celeriac_app
    with CeleryWorker(celery_venv, tmp_path, interop) as worker:
        r_add, r_who, r_boom = m.add.delay(2, 3), m.whoami.delay(), m.boom.delay("kaput")
        assert r_add.get(timeout=60) == 5
        assert r_who.get(timeout=60) == "celery"
        with pytest.raises(ValueError, match="kaput"):
            r_boom.get(timeout=60)
        assert r_boom.state == "FAILURE"
        # the kwargs land where Celery expects them
        assert m.add.apply_async(args=(1,), kwargs={"y": 41}).get(timeout=60) == 42
        # a bulk send (apply_many: the messages written by publish_bulk) runs there too
        bulk = m.add.apply_many([(i, i) for i in range(20)] + [((i,), {"y": 1}) for i in range(20)])
        assert [r.get(timeout=60) for r in bulk] == [2 * i for i in range(20)] + [i + 1 for i in range(20)]
        log = worker.log()
    assert f"Task interop.add[{r_add.id}] succeeded" in log


def test_countdown_from_celeriac_runs_on_celery_workers(celery_venv: Path, interop: dict[str, str],
                                                        tmp_path: Path, celeriac_app: ModuleType) -> None:
    """Only celeriac consumers promote the broker's delayed zset; with eta_in_broker=False an
    ETA message goes on the queue at once, as Celery sends it, and the Celery worker holds it."""
    m = celeriac_app
    m.app.conf.broker_transport_options = {"global_keyprefix": interop["INTEROP_PREFIX"], "eta_in_broker": False}
    with CeleryWorker(celery_venv, tmp_path, interop):
        sent = time.monotonic()
        result = m.add.apply_async((20, 22), countdown=2)
        assert result.get(timeout=60) == 42
        assert time.monotonic() - sent >= 1.5


# -- 3. both workers on one queue --------------------------------------------------------

def test_both_workers_share_a_queue_exactly_once(celery_venv: Path, interop: dict[str, str], tmp_path: Path,
                                                 celeriac_app: ModuleType) -> None:
    m = celeriac_app
    n = 500
    with CeleryWorker(celery_venv, tmp_path, interop), celeriac_worker(tmp_path, interop):
        # half sent by a Celery client, half by us, all on the one queue
        celery_ids = run_celery_client(celery_venv, interop, tmp_path, f"""
print(json.dumps([m.record.delay(i, 0.002).id for i in range({n // 2})]))
""")
        ours = [m.record.delay(i, 0.002) for i in range(n // 2, n)]
        from celeriac.result import AsyncResult, ResultSet
        results = ResultSet([AsyncResult(t, app=m.app) for t in celery_ids] + ours, app=m.app)
        values = results.join(timeout=300)
    assert values == list(range(n))
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        runs = [line.decode().split() for line in client.lrange(m.RUNS_KEY, 0, -1)]  # type: ignore[union-attr]
    finally:
        client.close()
    counts = collections.Counter(task_id for _impl, task_id in runs)
    expected = set(celery_ids) | {r.id for r in ours}
    assert set(counts) == expected
    duplicates = {t: c for t, c in counts.items() if c != 1}
    assert not duplicates, f"ran more than once: {duplicates}"
    by_impl = collections.Counter(impl for impl, _ in runs)
    assert by_impl["celery"] > 0 and by_impl["celeriac"] > 0, by_impl


# -- results written by one side, read by the other -------------------------------------

def test_group_results_saved_by_either_side(celery_venv: Path, interop: dict[str, str], tmp_path: Path,
                                            celeriac_app: ModuleType) -> None:
    from celeriac.result import AsyncResult, GroupResult

    m = celeriac_app
    ours = GroupResult(str(uuid.uuid4()), [AsyncResult(str(uuid.uuid4()), app=m.app) for _ in range(3)], app=m.app)
    ours.save()
    theirs = run_celery_client(celery_venv, interop, tmp_path, f"""
from celery.result import AsyncResult, GroupResult
g = GroupResult.restore({ours.id!r}, app=m.app)
saved = GroupResult("celery-gid", [AsyncResult("c1", app=m.app), AsyncResult("c2", app=m.app)], app=m.app)
saved.save()
print(json.dumps([g.id, [r.id for r in g.results]]))
""")
    assert theirs == [ours.id, [r.id for r in ours.results]]
    restored = GroupResult.restore("celery-gid", app=m.app)
    assert restored is not None and [r.id for r in restored.results] == ["c1", "c2"]
