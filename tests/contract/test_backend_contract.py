"""What every result backend must do, run against memory, SQLite and Redis.

Each test gets a fresh store: a unique memory:// name, a new SQLite file, or a
unique Redis key prefix (whose keys are deleted afterwards).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ChordReady, ResultBackend, StoredMeta
from celeriac.exceptions import TimeoutError
from celeriac.protocol.codecs import RESULT_MAGIC
from celeriac.protocol.results import exception_to_dict, make_meta

REDIS_URL = "redis://127.0.0.1:6379/0"
KINDS = ["memory", "sqlite", "redis"]


def _redis_up() -> bool:
    try:
        import redis
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as r:
            r.ping()
        return True
    except Exception:
        return False


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and not _redis_up():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Iterator[Callable[..., ResultBackend]]:
    """``make(expires=...)``: a backend on this test's store (several share it)."""
    made: list[ResultBackend] = []
    name = uuid.uuid4().hex
    prefix = f"tb{name[:10]}:"

    def factory(**kwargs: Any) -> ResultBackend:
        if kind == "memory":
            b = backend_from_url(f"memory://{name}", **kwargs)
        elif kind == "sqlite":
            b = backend_from_url(f"sqlite:///{tmp_path}/results.db", **kwargs)
        else:
            b = backend_from_url(REDIS_URL, options={"global_keyprefix": prefix}, **kwargs)
        made.append(b)
        return b

    factory.url = {"memory": f"memory://{name}", "sqlite": f"sqlite:///{tmp_path}/results.db",  # type: ignore[attr-defined]
                   "redis": REDIS_URL}[kind]
    factory.prefix = prefix  # type: ignore[attr-defined]
    yield factory
    for b in made:
        b.close()
    if kind == "redis":
        import redis
        with redis.Redis.from_url(REDIS_URL) as r:
            keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                r.delete(*keys)


def tid() -> str:
    return str(uuid.uuid4())


def success(task_id: str, value: Any = 42) -> dict[str, Any]:
    return make_meta(task_id, states.SUCCESS, value, ready=True)


def test_store_and_get(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(success(t, {"a": [1, 2]}))
    meta = b.get_task_meta(t)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == {"a": [1, 2]}
    assert meta["task_id"] == t
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    # another backend object on the same store sees it
    assert make().get_task_meta(t)["result"] == {"a": [1, 2]}


def test_unknown_id_is_pending(make: Callable[..., ResultBackend]) -> None:
    t = tid()
    meta = make().get_task_meta(t)
    assert meta["status"] == states.PENDING
    assert meta["result"] is None and meta["task_id"] == t


def test_store_many_and_get_many(make: Callable[..., ResultBackend]) -> None:
    b = make()
    ids = [tid() for _ in range(1500)]
    b.store_metas([success(t, i) for i, t in enumerate(ids)])
    missing = tid()
    got = b.get_many([*ids, missing])
    assert [got[t]["result"] for t in ids] == list(range(1500))
    assert got[missing]["status"] == states.PENDING


def test_states_progress_but_success_is_never_overwritten(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(make_meta(t, states.STARTED, {"pid": 1, "hostname": "h"}, ready=False))
    assert b.get_task_meta(t)["status"] == states.STARTED
    b.store_meta(success(t, 1))
    b.store_meta(make_meta(t, states.FAILURE, exception_to_dict(ValueError("late")), ready=True))
    b.store_metas([make_meta(t, states.RETRY, None, ready=False), make_meta(t, states.STARTED, None, ready=False)])
    meta = b.get_task_meta(t)
    assert meta["status"] == states.SUCCESS and meta["result"] == 1


def test_failure_can_be_replaced(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(make_meta(t, states.FAILURE, exception_to_dict(KeyError("k")), ready=True))
    assert b.get_task_meta(t)["result"]["exc_type"] == "KeyError"
    b.store_meta(success(t, 2))
    assert b.get_task_meta(t)["result"] == 2


def test_forget(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(success(t))
    b.forget(t)
    assert b.get_task_meta(t)["status"] == states.PENDING


def test_results_expire(make: Callable[..., ResultBackend]) -> None:
    b = make(expires=0.5)
    t = tid()
    b.store_meta(success(t))
    assert b.get_task_meta(t)["status"] == states.SUCCESS
    time.sleep(1.2)
    assert b.get_task_meta(t)["status"] == states.PENDING


def test_no_expiry_when_expires_is_none(make: Callable[..., ResultBackend]) -> None:
    b = make(expires=None)
    t = tid()
    b.store_meta(success(t))
    time.sleep(0.2)
    assert b.get_task_meta(t)["status"] == states.SUCCESS


def test_compressed_result_is_readable(make: Callable[..., ResultBackend]) -> None:
    """Celery 5.7's result_compression framing: magic, MIME type, NUL, compressed bytes."""
    b = make()
    t = tid()
    plain = b.encode(success(t, "squeezed"))
    b._set_many([StoredMeta(t, states.SUCCESS, RESULT_MAGIC + b"application/x-gzip\x00" + zlib.compress(plain))])
    assert b.get_task_meta(t)["result"] == "squeezed"


def test_wait_for_returns_at_once_when_ready(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(success(t, 7))
    start = time.monotonic()
    assert b.wait_for(t, timeout=10)["result"] == 7
    assert time.monotonic() - start < 1.0


def test_wait_for_times_out(make: Callable[..., ResultBackend]) -> None:
    b = make()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        b.wait_for(tid(), timeout=0.4)
    assert 0.3 < time.monotonic() - start < 3.0


def test_wait_for_wakes_on_store_from_another_thread(make: Callable[..., ResultBackend]) -> None:
    waiter, writer = make(), make()
    t = tid()
    stored_at: list[float] = []

    def store() -> None:
        time.sleep(0.3)
        writer.store_meta(make_meta(t, states.STARTED, None, ready=False))  # not ready: keeps waiting
        time.sleep(0.2)
        stored_at.append(time.monotonic())
        writer.store_meta(success(t, "hi"))

    th = threading.Thread(target=store)
    th.start()
    try:
        meta = waiter.wait_for(t, timeout=20)
        woke = time.monotonic()
    finally:
        th.join()
    assert meta["result"] == "hi"
    assert woke - stored_at[0] < 1.0, "the waiter should be woken, not poll slowly"


def test_wait_for_wakes_on_store_from_another_process(kind: str, make: Callable[..., ResultBackend]) -> None:
    if kind == "memory":
        pytest.skip("memory:// results live in one process")
    b = make()
    t = tid()
    opts = {"global_keyprefix": make.prefix} if kind == "redis" else {}  # type: ignore[attr-defined]
    code = (
        "import sys, time\n"
        "from celeriac.backends import backend_from_url\n"
        "from celeriac.protocol.results import make_meta\n"
        f"b = backend_from_url({make.url!r}, options={opts!r})\n"  # type: ignore[attr-defined]
        "b.connect()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "time.sleep(0.2)\n"
        f"b.store_meta(make_meta({t!r}, 'SUCCESS', 'from-child', ready=True))\n"
        "print(time.monotonic(), flush=True)\n"
        "b.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        meta = b.wait_for(t, timeout=30)
        woke = time.monotonic()
        stored_at = float(proc.stdout.readline())
    finally:
        proc.communicate(timeout=30)
    assert meta["result"] == "from-child"
    assert woke - stored_at < 1.0


def test_wait_for_many(make: Callable[..., ResultBackend]) -> None:
    waiter, writer = make(), make()
    ids = [tid() for _ in range(300)]
    writer.store_metas([success(t, -1) for t in ids[:50]])  # some are ready before the wait

    def store() -> None:
        for i in range(50, 300, 25):
            time.sleep(0.02)
            writer.store_metas([success(t, n) for n, t in enumerate(ids[i:i + 25], start=i)])

    th = threading.Thread(target=store)
    th.start()
    try:
        got = waiter.wait_for_many(ids, timeout=30)
    finally:
        th.join()
    assert list(got) == ids
    assert [got[t]["result"] for t in ids[50:]] == list(range(50, 300))


def test_wait_for_many_times_out_naming_pending(make: Callable[..., ResultBackend]) -> None:
    b = make()
    ready, missing = tid(), tid()
    b.store_meta(success(ready))
    with pytest.raises(TimeoutError, match="1 tasks"):
        b.wait_for_many([ready, missing], timeout=0.5)


def test_concurrent_waiters_on_one_id(make: Callable[..., ResultBackend]) -> None:
    b = make()
    t = tid()
    out: list[Any] = []

    def wait() -> None:
        out.append(b.wait_for(t, timeout=20)["result"])

    threads = [threading.Thread(target=wait) for _ in range(5)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    b.store_meta(success(t, "all"))
    for th in threads:
        th.join()
    assert out == ["all"] * 5


def test_group_save_restore_delete(make: Callable[..., ResultBackend]) -> None:
    b = make()
    gid, a, c = tid(), tid(), tid()
    tup = [[gid, None], [[[a, None], None], [[c, None], None]]]
    assert b.restore_group(gid) is None
    b.save_group(gid, tup)
    assert make().restore_group(gid) == tup
    assert b.get_task_meta(gid)["status"] == states.PENDING  # a group is not a task
    b.delete_group(gid)
    assert b.restore_group(gid) is None


# -- chords ----------------------------------------------------------------------------

def test_chord_join_completes_once_in_index_order(make: Callable[..., ResultBackend]) -> None:
    b = make()
    gid = tid()
    ids = [tid() for _ in range(3)]
    b.chord_set_size(gid, 3)
    assert b.chord_join(gid, ids[2], 2, states.SUCCESS, 30) is None
    assert b.chord_join(gid, ids[0], 0, states.SUCCESS, {"x": 10}) is None
    assert b.chord_join(gid, ids[0], 0, states.SUCCESS, {"x": 10}) is None  # duplicate: not counted
    ready = b.chord_join(gid, ids[1], 1, states.FAILURE, exception_to_dict(ValueError("in-chord")))
    assert isinstance(ready, ChordReady)
    assert [p.task_id for p in ready.parts] == ids
    assert [p.state for p in ready.parts] == [states.SUCCESS, states.FAILURE, states.SUCCESS]
    assert ready.results[0] == {"x": 10} and ready.results[2] == 30
    assert ready.results[1]["exc_type"] == "ValueError"
    # a late duplicate while the body is being sent, and after cleanup: nothing
    assert b.chord_join(gid, ids[1], 1, states.SUCCESS, 20) is None
    b.chord_cleanup(gid, ready.token)
    assert b.chord_join(gid, ids[2], 2, states.SUCCESS, 30) is None


def test_chord_join_needs_the_size(make: Callable[..., ResultBackend]) -> None:
    b = make()
    gid, t = tid(), tid()
    assert b.chord_join(gid, t, 0, states.SUCCESS, 1) is None  # size not set yet
    b.chord_set_size(gid, 2)
    assert b.chord_join(gid, t, 0, states.SUCCESS, 1) is None  # still the one part
    ready = b.chord_join(gid, tid(), 1, states.SUCCESS, 2)
    assert ready is not None and ready.results == [1, 2]


def test_chord_cleanup_needs_the_claim_token(make: Callable[..., ResultBackend]) -> None:
    b = make()
    gid = tid()
    b.chord_set_size(gid, 1)
    ready = b.chord_join(gid, tid(), 0, states.SUCCESS, 1)
    assert ready is not None
    b.chord_cleanup(gid, "not-the-token")  # ignored
    b.chord_cleanup(gid, ready.token)
    assert b.chord_join(gid, tid(), 0, states.SUCCESS, 1) is None


def test_chord_join_exactly_once_under_concurrent_duplicates(make: Callable[..., ResultBackend]) -> None:
    """Several threads join every part (as redelivered duplicates would): one winner."""
    size, copies = 20, 4
    gid = tid()
    ids = [tid() for _ in range(size)]
    make().chord_set_size(gid, size)
    backends = [make() for _ in range(copies)]
    winners: list[ChordReady] = []
    lock = threading.Lock()
    barrier = threading.Barrier(copies)

    def join(b: ResultBackend, order: list[int]) -> None:
        barrier.wait()
        for i in order:
            ready = b.chord_join(gid, ids[i], i, states.SUCCESS, i * i)
            if ready is not None:
                with lock:
                    winners.append(ready)

    orders = [list(range(size)), list(reversed(range(size))), list(range(0, size, 2)) + list(range(1, size, 2)),
              list(range(1, size, 2)) + list(range(0, size, 2))]
    threads = [threading.Thread(target=join, args=(b, o)) for b, o in zip(backends, orders, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(winners) == 1
    assert winners[0].results == [i * i for i in range(size)]
    assert [p.task_id for p in winners[0].parts] == ids
