"""The canvas tests' task module and a fixture that runs a real worker for it, on the
embedded SQLite broker (a fresh file per test) or on Redis (a fresh key prefix per test)."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import WorkerProcess, wait_for, write

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")

APP = '''
import os, time
from celeriac import Celery, group

app = Celery("ctasks", broker={broker!r}, backend={backend!r})
_lease = os.environ.get("CANVAS_LEASE")
app.conf.broker_transport_options = dict({transport!r}, **({{"lease_seconds": float(_lease)}} if _lease else {{}}))
app.conf.result_backend_transport_options = {transport!r}
app.conf.worker_prefetch_multiplier = 4
OUT = {out!r}


def note(kind, *values):
    with open(os.path.join(OUT, kind), "a") as f:
        f.write(" ".join(str(v) for v in values) + "\\n")


@app.task
def add(x, y):
    return x + y


@app.task
def multiply(x, y):
    return x * y


@app.task
def tsum(xs):
    note("tsum", sum(xs))
    return sum(xs)


@app.task
def collect_list(xs, *extra):
    note("collect_list", len(xs))
    return list(xs) + list(extra)


@app.task
def identity(x):
    return x


@app.task
def boom(*args):
    raise ValueError("boom: " + ",".join(str(a) for a in args))


@app.task
def record(tag, value=None):
    note("record", tag, value)
    return tag


@app.task
def on_error(request, exc, traceback):
    note("on_error", request.id, type(exc).__name__, str(exc).replace(" ", "_"), "Traceback" in (traceback or ""))


@app.task
def on_error_id(task_id):
    note("on_error_id", task_id)
    return task_id


@app.task(acks_late=True)
def slow_add(x, y, pause=0.5):
    note("slow_add_start", x)
    time.sleep(pause)
    return x + y


@app.task
def slow_early(x, pause=2.5):
    note("slow_early_start", x)
    time.sleep(pause)
    return x


@app.task(bind=True)
def replace_with_add(self, x):
    return self.replace(add.s(x, 100))


@app.task(bind=True)
def replace_with_chain(self, x):
    return self.replace(add.s(x, 1) | multiply.s(10))


@app.task(bind=True)
def replace_with_group(self, n):
    return self.replace(group(add.s(i, i) for i in range(n)))


@app.task(bind=True)
def spawn(self, n):
    return group(add.s(i, 1) for i in range(n)).apply_async().id


@app.task(bind=True)
def whoami(self, *args):
    return [self.request.id, self.request.parent_id, self.request.root_id, self.request.group]
'''


@dataclass
class CanvasEnv:
    kind: str
    path: Path
    out: Path
    m: ModuleType
    prefix: str | None

    def notes(self, kind: str) -> list[list[str]]:
        f = self.out / kind
        return [line.split() for line in f.read_text().splitlines()] if f.exists() else []

    def worker(self, *args: str, **env: str) -> WorkerProcess:
        return WorkerProcess(self.path, "ctasks", *(args or ("-c", "2")), "--loglevel=info", **env)


def _redis_client() -> Any:
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return client


@pytest.fixture(params=["sqlite", "redis"], name="canvas")
def canvas_fixture(request: pytest.FixtureRequest, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[CanvasEnv]:
    """``ctasks`` written for this test and imported here as the client (``canvas.m``)."""
    yield from make_env(request.param, tmp_path, monkeypatch)


def make_env(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CanvasEnv]:
    out = tmp_path / "out"
    out.mkdir()
    prefix = None
    client = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/q.db"
        transport: dict[str, Any] = {}
    else:
        client = _redis_client()
        prefix = f"tc{uuid.uuid4().hex[:10]}:"
        url = REDIS_URL
        transport = {"global_keyprefix": prefix}
    write(tmp_path / "ctasks.py", APP.format(broker=url, backend=url, transport=transport, out=str(out)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ctasks", None)
    module = importlib.import_module("ctasks")
    try:
        yield CanvasEnv(kind, tmp_path, out, module, prefix)
    finally:
        module.app.close()
        sys.modules.pop("ctasks", None)
        from celeriac import _state
        if _state._current_app is module.app:
            _state._current_app = None
        if client is not None:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


__all__ = ["CanvasEnv", "WorkerProcess", "canvas_fixture", "make_env", "wait_for"]
