"""Shared fixtures: a real broker per test, isolated (fresh SQLite file, key prefix on Redis)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from celeriac.brokers import Broker, broker_from_url  # noqa: E402

CELERY_REQUIREMENT = "celery[redis]>=5.3"
REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    try:
        import redis
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return True
    except Exception:
        return False


def make_broker(kind: str, tmp_path: Path, lease_seconds: float = 30.0) -> Broker:
    if kind == "memory":
        return broker_from_url(f"memory://{uuid.uuid4().hex}", lease_seconds=lease_seconds)
    if kind == "sqlite":
        return broker_from_url(f"sqlite:///{tmp_path}/broker.db", lease_seconds=lease_seconds)
    if kind == "redis":
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        return broker_from_url(REDIS_URL, lease_seconds=lease_seconds,
                               options={"global_keyprefix": prefix})
    raise ValueError(kind)


BROKER_KINDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BROKER_KINDS)
def broker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    kind = request.param
    if kind == "redis":
        try:
            import celeriac.brokers.redis  # noqa: F401
        except ImportError:
            pytest.fail("the Redis broker module is missing")
        if not _redis_up():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    made: list[Broker] = []

    def factory(lease_seconds: float = 30.0) -> Broker:
        b = make_broker(kind, tmp_path, lease_seconds)
        if made and kind == "redis":  # share the key prefix with the first broker
            b = broker_from_url(REDIS_URL, lease_seconds=lease_seconds, options=made[0].options)
        elif made and kind == "memory":
            b = broker_from_url(made[0].url, lease_seconds=lease_seconds)
        made.append(b)
        return b

    yield factory
    for b in made:
        if kind == "redis":
            _redis_cleanup(b)
        b.close()


def _redis_cleanup(b: Broker) -> None:
    prefix = b.options.get("global_keyprefix")
    if not prefix:
        return
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)


# -- the real Celery, in its own virtualenv (interop tests, benchmarks) -------------------

def _venv_ok(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import celery, redis"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def celery_venv() -> Path:
    venv = Path(os.environ.get("CELERIAC_CELERY_VENV") or ROOT / ".venv-celery")
    python = venv / "bin" / "python"
    if _venv_ok(python):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(str(venv) + ".lock", "w") as lock:   # two test runs must not build it at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_ok(python):
            return venv
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", CELERY_REQUIREMENT]]
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _unavailable(f"cannot create the Celery virtualenv at {venv}: {exc}")
            if done.returncode != 0:
                _unavailable(f"cannot create the Celery virtualenv at {venv} ({' '.join(cmd[-2:])} failed): "
                            f"{(done.stderr or done.stdout)[-800:]}")
    if not _venv_ok(python):
        _unavailable(f"the Celery virtualenv at {venv} cannot import celery and redis")
    return venv



def _unavailable(reason: str) -> None:
    """Without the Celery venv the interop tests cannot run: a failure in CI, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def server() -> Iterator[Any]:
    """A throw-away redis-server on a port of its own (command counts, kills, restarts)."""
    import shutil

    from support import Server
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    s = Server()
    yield s
    s.kill()
