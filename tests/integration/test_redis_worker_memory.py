"""An idle prefork worker on Redis stays small: neither its main process nor its children
load redis-py, ssl, asyncio, rich or importlib.metadata (celeriac speaks RESP itself,
``celeriac/_resp.py``), and the three processes together stay well under Celery's
footprint (141 MiB on the machine where this was measured; we use about 63)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import WorkerProcess, delete_prefixed, write

from celeriac import Celery

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")
HEAVY = ("redis", "ssl", "asyncio", "rich", "importlib.metadata", "email")
RSS_BOUND_MIB = 75

APP = """
import json, os, sys
from celeriac import Celery, signals

HEAVY = {heavy!r}
app = Celery('memapp', broker={url!r}, backend={url!r})
app.conf.broker_transport_options = {{'global_keyprefix': {prefix!r}}}
app.conf.result_backend_transport_options = {{'global_keyprefix': {prefix!r}}}

def _loaded():
    return sorted(m for m in HEAVY if m in sys.modules)

@app.task
def loaded():
    return [os.getpid(), _loaded()]

@signals.worker_shutdown.connect
def _report(**kwargs):
    with open(os.environ['MEMAPP_REPORT'], 'w') as f:
        json.dump({{'pid': os.getpid(), 'loaded': _loaded()}}, f)
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Celery, str]]:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"mem{uuid.uuid4().hex[:10]}:"
    write(tmp_path / "memapp.py", APP.format(url=REDIS_URL, prefix=prefix, heavy=HEAVY))
    client = Celery("memapp", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    client.conf.broker_transport_options = {"global_keyprefix": prefix}
    client.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    yield tmp_path, client, prefix
    client.close()
    delete_prefixed(r, prefix)
    r.close()


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _libs(pid: int) -> set[str]:
    """The shared objects a process has mapped (libssl, _ssl, _asyncio would show here)."""
    return {Path(line.split()[-1]).name for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if ".so" in line}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_idle_prefork_worker_loads_no_redis_py_ssl_or_asyncio(env: tuple[Path, Celery, str]) -> None:
    tmp_path, client, _ = env
    report = tmp_path / "main-report.json"
    with WorkerProcess(tmp_path, "memapp", "-c", "2", "-n", "mem@%h", "-l", "info",
                       MEMAPP_REPORT=str(report)) as worker:
        main_pid = worker.proc.pid
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(main_pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == 2, children
        # work: results stored (the fetch settles them), a group waited on, a remote-control ping
        seen: dict[int, list[str]] = {}
        for _ in range(10):
            batch = [client.send_task("memapp.loaded") for _ in range(20)]
            for res in batch:
                pid, loaded = res.get(timeout=30)
                seen[pid] = loaded
            if len(seen) == 2:
                break
        assert set(seen) == set(children), (seen, children)
        replies = client.control.ping(timeout=5)
        assert any("mem@" in name for reply in replies for name in reply), replies
        # the children's answers, from the tasks they ran
        for pid, loaded in seen.items():
            assert loaded == [], f"child {pid} imported {loaded}"
        time.sleep(3)  # idle a moment: heartbeats, the control thread's polls
        # mapped libraries, now that everything has run once
        for pid in (main_pid, *children):
            libs = _libs(pid)
            bad = sorted(lib for lib in libs if lib.startswith(("libssl", "_ssl", "_asyncio")))
            assert not bad, f"process {pid} mapped {bad}"
        rss = {pid: _status(pid, "VmRSS:") for pid in (main_pid, *children)}
        total_mib = sum(rss.values()) / 1024
        assert total_mib < RSS_BOUND_MIB, f"idle worker uses {total_mib:.1f} MiB RSS ({rss})"
        worker.stop()
    data = json.loads(report.read_text())
    assert data["pid"] == main_pid
    assert data["loaded"] == [], f"the main process imported {data['loaded']}"
