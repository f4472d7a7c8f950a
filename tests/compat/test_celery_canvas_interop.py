"""Canvas across implementations over Redis: chains, groups and chords sent by a real Celery
client run on celeriac workers (Celery's chord join keys, its ``celery.chord`` signatures
inside chains, its errbacks), and the same workflows sent by celeriac run on a real Celery
worker.  Celery comes from the shared virtualenv fixture in tests/conftest.py."""

from __future__ import annotations

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
T = 60


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"tci{uuid.uuid4().hex[:10]}:"
    yield {"INTEROP_BROKER": REDIS_URL, "INTEROP_PREFIX": prefix, "INTEROP_QUEUE": f"q{uuid.uuid4().hex[:8]}",
           "PYTHONPATH": os.pathsep.join([str(COMPAT_DIR), str(ROOT)]), "PYTHONUNBUFFERED": "1"}
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def runs(env: dict[str, str]) -> list[list[str]]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        return [line.decode().split() for line in client.lrange(env["INTEROP_PREFIX"] + "canvas.runs", 0, -1)]
    finally:
        client.close()


def celery_client(venv: Path, env: dict[str, str], tmp_path: Path, code: str) -> Any:
    """Run ``code`` under Celery with the app imported as ``m``; it prints one JSON line."""
    full = {**os.environ, **env, "INTEROP_IMPL": "celery", "PYTHONPATH": str(COMPAT_DIR)}
    done = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import json\nimport canvas_interop_app as m\nfrom celery import chain, chord, group\n"
                           + code], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the Celery client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_celery_client_canvas_on_celeriac_worker(celery_venv: Path, env: dict[str, str],
                                                 tmp_path: Path) -> None:
    with WorkerProcess(tmp_path, "canvas_interop_app", "-P", "threads", "-c", "4", "--loglevel=info",
                       INTEROP_IMPL="celeriac", **env) as worker:
        out = celery_client(celery_venv, env, tmp_path, """
out = {}
out["chain"] = chain(m.add.s(4, 6) | m.multiply.s(3))().get(timeout=60)
res = chain(m.add.s(1, 2), m.add.s(3), m.add.s(4)).apply_async()
out["chain3"] = [res.get(timeout=60), res.parent.get(timeout=60), res.parent.parent.get(timeout=60)]
out["group"] = group(m.add.s(i, i) for i in range(10))().get(timeout=60)
out["chord"] = chord(group(m.add.s(i, i) for i in range(10)))(m.tsum.s()).get(timeout=60)
out["chain_group_task"] = chain(m.add.s(1, 1), group(m.add.s(1), m.add.s(2)), m.tsum.s())().get(timeout=60)
out["chain_chord_task"] = chain(m.add.s(1, 1), chord([m.add.s(1), m.add.s(2)], m.tsum.s()),
                                m.multiply.s(10))().get(timeout=60)
out["link"] = m.add.apply_async((2, 3), link=m.record.s()).get(timeout=60)
bad = chord([m.add.s(1, 1), m.boom.s()], m.tsum.s())
bad.link_error(m.on_error.s())
res = bad.apply_async()
try:  # the body's own result (res.get() would re-raise the failed header task's error first)
    m.app.AsyncResult(res.id).get(timeout=60)
    out["chord_error"] = None
except Exception as exc:
    out["chord_error"] = [type(exc).__name__, str(exc), res.parent.results[1].id, res.id]
print(json.dumps(out))
""")
        wait_for(lambda: any(r[1] == "on_error" for r in runs(env)), T, message="the chord's errback")
        wait_for(lambda: any(r[1] == "record" for r in runs(env)), T, message="the link")
        log = worker.log()
    assert out["chain"] == 30
    assert out["chain3"] == [10, 6, 3]
    assert out["group"] == [2 * i for i in range(10)]
    assert out["chord"] == 90
    assert out["chain_group_task"] == 7
    assert out["chain_chord_task"] == 70
    assert out["link"] == 5
    name, message, failing_id, body_id = out["chord_error"]
    assert name == "ChordError" and message == f"Dependency {failing_id} raised ValueError('in-chord')"
    done = runs(env)
    assert ["celeriac", "on_error", body_id, "ChordError"] in done
    assert ["celeriac", "record", "5"] in done
    assert sorted(int(r[2]) for r in done if r[1] == "tsum") == [7, 7, 90]   # each body once
    assert "ci.tsum" in log


class CeleryWorker:
    def __init__(self, venv: Path, tmp_path: Path, env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"celery-worker-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        full = {**os.environ, **env, "INTEROP_IMPL": "celery", "PYTHONPATH": str(COMPAT_DIR)}
        cmd = [str(venv / "bin" / "celery"), "-A", "canvas_interop_app", "worker", "-l", "info", "-P", "threads",
               "-c", "4", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-n", f"celery-{uuid.uuid4().hex[:6]}@%h"]
        self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=full, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: " ready." in self.log_path.read_text() or self.proc.poll() is not None, 120,
                 message="the Celery worker to be ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"the Celery worker exited:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def ours(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from import_as_celeriac("canvas_interop_app", env, monkeypatch)


def test_celeriac_canvas_on_celery_worker(celery_venv: Path, env: dict[str, str], tmp_path: Path,
                                          ours: ModuleType) -> None:
    from celeriac import chain, chord, group
    from celeriac.exceptions import ChordError
    m = ours
    worker = CeleryWorker(celery_venv, tmp_path, env)
    try:
        assert chain(m.add.s(4, 6) | m.multiply.s(3))().get(timeout=T) == 30
        res = chain(m.add.s(1, 2), m.add.s(3), m.add.s(4)).apply_async()
        assert [res.get(timeout=T), res.parent.get(timeout=T), res.parent.parent.get(timeout=T)] == [10, 6, 3]
        assert group(m.add.s(i, i) for i in range(10))().get(timeout=T) == [2 * i for i in range(10)]
        assert chord(group(m.add.s(i, i) for i in range(10)))(m.tsum.s()).get(timeout=T) == 90
        assert chain(m.add.s(1, 1), group(m.add.s(1), m.add.s(2)), m.tsum.s())().get(timeout=T) == 7
        assert chain(m.add.s(1, 1), chord([m.add.s(1), m.add.s(2)], m.tsum.s()),
                     m.multiply.s(10))().get(timeout=T) == 70
        res = chord([m.add.s(1, 1), m.boom.s()], m.tsum.s()).apply_async()
        with pytest.raises(ChordError, match=f"Dependency {res.parent.results[1].id} raised ValueError"):
            res.get(timeout=T)
    finally:
        worker.stop()
    assert sorted(int(r[2]) for r in runs(env) if r[1] == "tsum") == [7, 7, 90]
    assert all(r[0] == "celery" for r in runs(env))
