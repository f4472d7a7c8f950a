"""The Redis hot path (issue 4, batching): one round trip per worker batch, a
single round trip per ``delay()``, and that neither gives up any safety: results
are stored before acks, a dropped connection is noticed, NOSCRIPT is recovered."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from support import Server

from celeriac import Celery
from celeriac.backends import backend_from_url
from celeriac.backends.redis import STORE
from celeriac.brokers import broker_from_url
from celeriac.brokers.redis import RedisBroker
from celeriac.protocol.message import build_task_message
from celeriac.protocol.results import make_meta
from celeriac.worker.loop import WorkLoop

pytestmark = pytest.mark.redis


def env(n: int = 0) -> Any:
    return build_task_message("t.add", str(uuid.uuid4()), (n, n))


def test_settles_with_says_whether_results_can_ride_on_the_fetch(server: Server, tmp_path: Path) -> None:
    b = broker_from_url(server.url(), options={"global_keyprefix": "p:"})
    same = backend_from_url(server.url(), options={"global_keyprefix": "p:"})
    other_db = backend_from_url(server.url(1))
    sqlite = backend_from_url(f"sqlite:///{tmp_path}/r.db")
    try:
        assert isinstance(b, RedisBroker)
        assert b.settles_with(same) == "all"
        assert b.settles_with(other_db) == "acks"
        assert b.settles_with(sqlite) == "acks"
    finally:
        for x in (b, same, other_db, sqlite):
            x.close()


def test_fetch_stores_results_acks_and_leases_in_one_script_call(server: Server) -> None:
    b: Any = broker_from_url(server.url(), options={"global_keyprefix": "p:"})
    backend: Any = backend_from_url(server.url(), options={"global_keyprefix": "p:"})
    try:
        for i in range(4):
            b.publish(env(i), "q")
        first = b.fetch(["q"], 2, 1.0, "c1")
        assert len(first) == 2
        metas = [make_meta(d.envelope.headers["id"], "SUCCESS", i, ready=True) for i, d in enumerate(first)]
        server.raw.config_resetstat()
        second = b.fetch(["q"], 2, 1.0, "c1", settle=b.settlement(first, metas, backend))
        calls = server.calls()
        assert len(second) == 2
        # one EVALSHA (plus the BRPOP written behind it, which returns at once): no MULTI, no store script
        assert calls.get("evalsha") == 1 and "exec" not in calls and "multi" not in calls
        for i, d in enumerate(first):
            assert backend.get_task_meta(d.envelope.headers["id"])["result"] == i
        leased = {t.decode() for t in server.raw.hkeys("p:unacked")}  # type: ignore[union-attr]
        assert leased == {d.tag for d in second}
        assert b.stats("q").leased == 2
        b.ack(second)
        assert server.raw.hlen("p:unacked") == 0 and b.stats("q").leased == 0
    finally:
        b.close()
        backend.close()


def test_settle_never_replaces_a_stored_success(server: Server) -> None:
    """The fetch script stores results with redis_store.lua's own rules."""
    b: Any = broker_from_url(server.url())
    backend: Any = backend_from_url(server.url())
    try:
        b.publish(env(1), "q")
        [d] = b.fetch(["q"], 1, 1.0, "c1")
        tid = d.envelope.headers["id"]
        backend.store_meta(make_meta(tid, "SUCCESS", "first", ready=True))
        b.fetch(["q"], 1, 0.01, "c1", settle=b.settlement([d], [make_meta(tid, "RETRY", "late", ready=False)],
                                                            backend))
        assert backend.get_task_meta(tid)["result"] == "first"
        assert server.raw.ttl(backend.key_for(tid)) > 0
    finally:
        b.close()
        backend.close()


def test_fetch_recovers_from_a_script_flush(server: Server) -> None:
    b = broker_from_url(server.url())
    try:
        b.publish(env(1), "q")
        server.raw.script_flush()
        [d] = b.fetch(["q"], 1, 1.0, "c1")
        d.ack()
        server.raw.script_flush()
        b.publish(env(2), "q")
        assert len(b.fetch(["q"], 5, 1.0, "c1")) == 1
    finally:
        b.close()


def test_publish_reconnects_when_the_server_closed_the_connection(server: Server) -> None:
    b = broker_from_url(server.url())
    try:
        b.publish(env(1), "q")
        b.publish(env(2), "q")                     # the fast lane's connection is open now
        server.raw.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.05)
        b.publish(env(3), "q")                     # noticed before sending: no error, no loss
        assert b.stats("q").ready == 3
    finally:
        b.close()


def test_fetch_wakes_on_publish_without_polling(server: Server) -> None:
    b = broker_from_url(server.url(), options={"polling_interval": 5})
    p = broker_from_url(server.url())
    got: list[float] = []
    try:
        b.declare_queue("q")

        def consume() -> None:
            ds = b.fetch(["q"], 4, 10.0, "c1")
            got.append(time.monotonic())
            b.ack(ds)

        th = threading.Thread(target=consume)
        th.start()
        time.sleep(0.3)
        sent = time.monotonic()
        p.publish(env(1), "q")
        th.join(10)
        assert got and got[0] - sent < 1.0
    finally:
        b.close()
        p.close()


def test_a_delayed_message_due_soon_ends_the_wait(server: Server) -> None:
    b = broker_from_url(server.url(), options={"polling_interval": 5})
    try:
        b.publish(env(1), "q", not_before=time.time() + 0.3)
        t0 = time.monotonic()
        got = b.fetch(["q"], 1, 5.0, "c1")
        assert len(got) == 1 and 0.2 < time.monotonic() - t0 < 2.0
    finally:
        b.close()


def _worker_app(url: str, backend_url: str) -> Celery:
    app = Celery("hot", broker=url, backend=backend_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": "h:"}
    app.conf.result_backend_transport_options = {"global_keyprefix": "h:"}

    @app.task(name="hot.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.mark.parametrize("same_server", [True, False])
def test_worker_loop_round_trips_per_batch(server: Server, same_server: bool) -> None:
    """A backlog of 40 tasks in batches of 10: one fetch script per batch settles the
    previous one; results elsewhere cost one store per batch before it."""
    app = _worker_app(server.url(), server.url() if same_server else server.url(2))
    results = [app.tasks["hot.add"].delay(i, i) for i in range(40)]
    loop = WorkLoop(app, ["celery"], "hot/1", "hot@host", prefetch=10)
    assert loop.settle_mode == ("all" if same_server else "acks")
    app.broker._lane.confirm()              # pipelined publishes: run before the counts start
    server.raw.config_resetstat()
    started = time.monotonic()
    th = threading.Thread(target=loop.run)
    th.start()
    try:
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(40)]
        deadline = time.monotonic() + 5
        while app.broker.stats("celery").leased and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.broker.stats("celery").leased == 0
    finally:
        loop.stop()
        th.join(10)
    calls = server.calls()
    # 4 batches + the settling fetch of the last one, + 4 result stores when results live
    # elsewhere, + the idle consumer's polls (one per polling_interval, 0.25 s)
    polls = int((time.monotonic() - started) / 0.25) + 2
    assert 5 <= calls.get("evalsha", 0) <= 5 + (0 if same_server else 4) + polls
    assert "exec" not in calls              # acks never go out as a MULTI of their own
    # with results on this server, the backend's own store script never ran (never loaded)
    assert server.raw.script_exists(STORE.sha) == [not same_server]
    stored = server.raw.keys("h:celery-task-meta-*") if same_server else \
        redis.Redis(port=server.port, db=2).keys("h:celery-task-meta-*")
    assert len(stored) == 40
    app.close()


def test_results_are_stored_before_their_messages_are_acked(server: Server) -> None:
    """Results on another server: they are written before the fetch that acks."""
    app = _worker_app(server.url(), server.url(3))
    seen: list[str] = []
    original = app.backend.store_metas

    def store(metas: Any) -> None:
        # every message whose result is being stored must still be unacked
        assert server.raw.hlen("h:unacked") >= len(metas)
        seen.extend(m["task_id"] for m in metas)
        original(metas)

    app.backend.store_metas = store
    results = [app.tasks["hot.add"].delay(i, 1) for i in range(12)]
    loop = WorkLoop(app, ["celery"], "hot/2", "hot@host", prefetch=4)
    th = threading.Thread(target=loop.run)
    th.start()
    try:
        assert [r.get(timeout=10) for r in results] == [i + 1 for i in range(12)]
    finally:
        loop.stop()
        th.join(10)
    assert sorted(seen) == sorted(r.id for r in results)
    stored: Any = redis.Redis(port=server.port, db=3).get(f"h:celery-task-meta-{results[0].id}")
    assert json.loads(stored)["result"] == 1
    app.close()


@pytest.mark.parametrize("prefix", ["", "app:", "{tag}x"])
def test_the_short_layout_is_the_json_layout(server: Server, prefix: str) -> None:
    """redis_lib.lua builds the default layout itself from "~<prefix>"; it must be the
    table the JSON form gives."""
    from celeriac.brokers.redis import _script_text
    b: Any = broker_from_url(server.url(), options={"global_keyprefix": prefix} if prefix else {})
    try:
        assert b._layout == "~" + prefix
        dump = _script_text("release").split("-- release")[0] + "\nreturn cjson.encode(C)"
        short = json.loads(server.raw.eval(dump, 0, b._layout))
        full = json.loads(server.raw.eval(dump, 0, b.layout_json))
        assert short == full
        custom: Any = broker_from_url(server.url(), options={"priority_steps": [0, 5]})
        assert custom._layout.startswith("{")
        custom.close()
    finally:
        b.close()


def test_a_forked_child_gets_its_own_lane(server: Server) -> None:
    """The parent's fast-lane lock may be held when it forks (another thread publishing):
    the child must not inherit it, nor the parent's socket."""
    import os
    b: Any = broker_from_url(server.url())
    try:
        b.publish(env(1), "q")
        b._lane.lock.acquire()          # as if a thread were inside call() at fork time
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                b.publish(env(2), "q")
                ok = b._lane.conn is not None and b._lane.pid == os.getpid()
                os.write(w, b"ok" if ok else b"no lane")
            except BaseException as exc:
                os.write(w, repr(exc).encode()[:200])
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 300) == b"ok"
        os.close(r)
        os.close(w)
        b._lane.lock.release()
        b.publish(env(3), "q")
        assert b.stats("q").ready == 3
    finally:
        b.close()
