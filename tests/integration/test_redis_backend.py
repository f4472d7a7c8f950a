"""The Redis result backend seen from raw redis-py: Celery's key names, TTLs, payloads."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celeriac import states
from celeriac._redis_url import parse_url
from celeriac.backends import backend_from_url
from celeriac.backends.redis import RedisBackend, result_key_prefix
from celeriac.exceptions import ImproperlyConfigured, OperationalError
from celeriac.protocol.results import exception_to_dict, make_meta

pytestmark = pytest.mark.redis
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def prefix(r: redis.Redis) -> Iterator[str]:
    p = f"tr{uuid.uuid4().hex[:10]}:"
    yield p
    # also covers the "<p>_" form the no-separator prefixes get
    keys = list(r.scan_iter(match=f"{p[:-1]}*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture
def make(prefix: str) -> Iterator[Callable[..., RedisBackend]]:
    made: list[RedisBackend] = []

    def factory(**kwargs: Any) -> RedisBackend:
        options = {"global_keyprefix": prefix, **kwargs.pop("options", {})}
        b = backend_from_url(REDIS_URL, options=options, **kwargs)
        assert isinstance(b, RedisBackend)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def tid() -> str:
    return str(uuid.uuid4())


def raw_get(r: redis.Redis, key: str) -> bytes:
    value = r.get(key)
    assert isinstance(value, bytes), f"{key} is missing"
    return value


def test_meta_key_payload_and_ttl(make: Callable[..., RedisBackend], prefix: str, r: redis.Redis) -> None:
    b = make(expires=3600)
    t = tid()
    meta = make_meta(t, states.SUCCESS, 5, ready=True)
    b.store_meta(meta)
    raw = raw_get(r, f"{prefix}celery-task-meta-{t}")
    assert raw.startswith(b'{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], "date_done": "')
    assert json.loads(raw) == meta
    assert list(json.loads(raw)) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert 3590 <= r.ttl(f"{prefix}celery-task-meta-{t}") <= 3600


def test_default_ttl_is_a_day_and_none_means_forever(make: Callable[..., RedisBackend], prefix: str,
                                                      r: redis.Redis) -> None:
    t1, t2 = tid(), tid()
    make().store_meta(make_meta(t1, states.SUCCESS, 1, ready=True))
    make(expires=None).store_meta(make_meta(t2, states.SUCCESS, 1, ready=True))
    assert 86390 <= r.ttl(f"{prefix}celery-task-meta-{t1}") <= 86400
    assert r.ttl(f"{prefix}celery-task-meta-{t2}") == -1


def test_failure_meta_as_celery_writes_it(make: Callable[..., RedisBackend], prefix: str, r: redis.Redis) -> None:
    b = make()
    t = tid()
    b.store_meta(make_meta(t, states.FAILURE, exception_to_dict(ValueError("kaput")), "Traceback...\n",
                           ready=True, group_id="g1", parent_id="p1"))
    stored = json.loads(r.get(f"{prefix}celery-task-meta-{t}") or b"")
    assert stored["result"] == {"exc_type": "ValueError", "exc_message": ["kaput"], "exc_module": "builtins"}
    assert list(stored)[-3:] == ["group_id", "parent_id", "task_id"]


def test_every_store_is_published_on_the_key_channel(make: Callable[..., RedisBackend], prefix: str,
                                                      r: redis.Redis) -> None:
    b = make()
    t = tid()
    channel = f"{prefix}celery-task-meta-{t}"
    ps = r.pubsub(ignore_subscribe_messages=True)
    try:
        ps.subscribe(channel)
        assert ps.get_message(timeout=2) is None  # consumes the confirmation
        b.store_metas([make_meta(t, states.STARTED, {"pid": 1, "hostname": "h"}, ready=False),
                       make_meta(tid(), states.SUCCESS, 0, ready=True)])
        b.store_meta(make_meta(t, states.SUCCESS, "done", ready=True))
        got: list[bytes] = []
        end = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < end:
            msg = ps.get_message(timeout=0.5)
            if msg:
                assert msg["channel"] == channel.encode()
                got.append(msg["data"])
        assert [json.loads(d)["status"] for d in got] == ["STARTED", "SUCCESS"]
        assert got[1] == r.get(channel)
        # a skipped write (SUCCESS is kept) is not published either
        b.store_meta(make_meta(t, states.FAILURE, None, ready=True))
        assert ps.get_message(timeout=0.3) is None
    finally:
        ps.close()


@pytest.mark.parametrize(("given", "expected"), [
    ("pfx", "pfx_"), ("pfx:", "pfx:"), ("pfx_", "pfx_"), ("pfx-", "pfx-"), ("pfx.", "pfx."), ("", ""),
    (None, ""),
])
def test_global_keyprefix_rule(given: str | None, expected: str) -> None:
    assert result_key_prefix(given) == expected


def test_global_keyprefix_applies_to_keys_and_channels(make: Callable[..., RedisBackend], prefix: str,
                                                       r: redis.Redis) -> None:
    bare = prefix[:-1]  # no separator at the end: Celery appends "_"
    b = make(options={"global_keyprefix": bare})
    t = tid()
    ps = r.pubsub(ignore_subscribe_messages=True)
    try:
        ps.subscribe(f"{bare}_celery-task-meta-{t}")
        ps.get_message(timeout=1)
        b.store_meta(make_meta(t, states.SUCCESS, 1, ready=True))
        assert r.exists(f"{bare}_celery-task-meta-{t}")
        msg = ps.get_message(timeout=2)
        assert msg is not None and json.loads(msg["data"])["result"] == 1
    finally:
        ps.close()


def test_reads_what_celery_wrote(make: Callable[..., RedisBackend], prefix: str, r: redis.Redis) -> None:
    t = tid()
    r.set(f"{prefix}celery-task-meta-{t}",
          '{"status": "FAILURE", "result": {"exc_type": "TaskRevokedError", "exc_message": ["revoked"], '
          '"exc_module": "celery.exceptions"}, "traceback": null, "children": null, '
          '"date_done": "2026-11-21T07:43:58.295091+00:00", "task_id": "' + t + '"}')
    meta = make().get_task_meta(t)
    assert meta["status"] == states.FAILURE and meta["result"]["exc_type"] == "TaskRevokedError"


def test_success_written_by_celery_is_not_overwritten(make: Callable[..., RedisBackend], prefix: str,
                                                      r: redis.Redis) -> None:
    t = tid()
    key = f"{prefix}celery-task-meta-{t}"
    r.set(key, json.dumps({"status": "SUCCESS", "result": 1, "task_id": t}))
    make().store_meta(make_meta(t, states.FAILURE, None, ready=True))
    assert json.loads(r.get(key) or b"")["status"] == "SUCCESS"


def test_retry_does_not_replace_failure_or_revoked(make: Callable[..., RedisBackend]) -> None:
    b = make()
    t1, t2 = tid(), tid()
    b.store_meta(make_meta(t1, states.FAILURE, exception_to_dict(KeyError("x")), ready=True))
    b.store_meta(make_meta(t2, states.REVOKED, None, ready=True))
    b.store_metas([make_meta(t1, states.RETRY, None, ready=False), make_meta(t2, states.RETRY, None, ready=False)])
    assert b.get_task_meta(t1)["status"] == states.FAILURE
    assert b.get_task_meta(t2)["status"] == states.REVOKED


@pytest.mark.parametrize("serializer", ["pickle", "msgpack"])
def test_success_is_kept_with_binary_serializers(make: Callable[..., RedisBackend], serializer: str) -> None:
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    b = make(serializer=serializer, accept=[serializer])
    t = tid()
    b.store_meta(make_meta(t, states.SUCCESS, {"v": 1}, ready=True))
    b.store_meta(make_meta(t, states.FAILURE, None, ready=True))
    assert b.get_task_meta(t)["status"] == states.SUCCESS
    t2 = tid()
    b.store_meta(make_meta(t2, states.STARTED, None, ready=False))
    b.store_meta(make_meta(t2, states.SUCCESS, 2, ready=True))
    assert b.get_task_meta(t2)["result"] == 2


def test_pickled_success_from_celery_protocol_2_is_kept(make: Callable[..., RedisBackend], prefix: str,
                                                        r: redis.Redis) -> None:
    t = tid()
    key = f"{prefix}celery-task-meta-{t}"
    r.set(key, pickle.dumps({"status": "SUCCESS", "result": 3, "task_id": t}, protocol=2))
    make(serializer="pickle", accept=["pickle"]).store_meta(make_meta(t, states.FAILURE, None, ready=True))
    assert pickle.loads(raw_get(r, key))["status"] == "SUCCESS"


def test_group_meta_key_and_format(make: Callable[..., RedisBackend], prefix: str, r: redis.Redis) -> None:
    b = make()
    gid, a = tid(), tid()
    tup = [[gid, None], [[[a, None], None]]]
    b.save_group(gid, tup)
    key = f"{prefix}celery-taskset-meta-{gid}"
    assert json.loads(r.get(key) or b"") == {"result": tup}
    assert r.ttl(key) > 86000
    r.set(key, json.dumps({"result": [[gid, None], [[["x", None], None]]]}))  # as Celery saves it
    assert b.restore_group(gid) == [[gid, None], [[["x", None], None]]]
    b.delete_group(gid)
    assert not r.exists(key)


def test_chord_keys_as_celery_57(make: Callable[..., RedisBackend], prefix: str, r: redis.Redis) -> None:
    b = make(expires=600)
    gid, t0, t1 = tid(), tid(), tid()
    gk = f"{prefix}celery-taskset-meta-{gid}"
    r.set(gk + ".c", "stale")
    b.chord_set_size(gid, 2)
    assert r.get(gk + ".s") == b"2" and 590 <= r.ttl(gk + ".s") <= 600
    assert not r.exists(gk + ".c")
    assert b.chord_join(gid, t1, 1, states.SUCCESS, 4) is None
    assert r.zrange(gk + ".j", 0, -1, withscores=True) == [(f'[1, "{t1}", "SUCCESS", 4]'.encode(), 1.0)]
    assert r.smembers(gk + ".d") == {f"{t1}:1".encode()}
    assert 590 <= r.ttl(gk + ".j") <= 600
    ready = b.chord_join(gid, t0, 0, states.SUCCESS, 2)
    assert ready is not None and ready.results == [2, 4]
    assert r.get(gk + ".c") == ready.token.encode()
    b.chord_cleanup(gid, ready.token)
    assert r.get(gk + ".c") == b"done" and 290 <= r.ttl(gk + ".c") <= 300
    assert not any(r.exists(gk + s) for s in (".j", ".d", ".s", ".t"))


def test_chord_counts_parts_joined_by_a_celery_worker(make: Callable[..., RedisBackend], prefix: str,
                                                      r: redis.Redis) -> None:
    """A Celery 5.6 worker only ZADDs; its parts count, and .t (add_to_chord) raises the total."""
    b = make()
    gid, t0, t1, t2 = tid(), tid(), tid(), tid()
    gk = f"{prefix}celery-taskset-meta-{gid}"
    b.chord_set_size(gid, 2)
    r.incr(gk + ".t")
    r.zadd(gk + ".j", {f'[1, "{t0}", "SUCCESS", 10]': 0})
    assert b.chord_join(gid, t1, 1, states.SUCCESS, 11) is None
    ready = b.chord_join(gid, t2, 2, states.SUCCESS, 12)
    assert ready is not None and ready.results == [10, 11, 12]


def test_wait_survives_a_dropped_pubsub_connection(make: Callable[..., RedisBackend], r: redis.Redis) -> None:
    waiter, writer = make(), make()
    t = tid()
    out: list[Any] = []
    busy = waiter._direct().lock   # as if another thread waited on the direct connection
    busy.acquire()
    th = threading.Thread(target=lambda: out.append(waiter.wait_for(t, timeout=30)))
    th.start()
    try:
        listener = None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            listener = waiter._listener_obj
            ps = listener.pubsub if listener is not None else None
            if ps is not None and ps.connection is not None and listener and listener.boxes \
                    and not listener.inflight:
                break
            time.sleep(0.05)
        assert listener is not None
        generation = listener.generation
        sock = listener.pubsub.connection.sock
        host, port = sock.getsockname()[:2]
        r.client_kill(f"{host}:{port}")       # only our own connection
        end = time.monotonic() + 10
        while listener.generation == generation and time.monotonic() < end:
            time.sleep(0.02)
        assert listener.generation > generation, "the listener should reconnect and resubscribe"
        start = time.monotonic()
        writer.store_meta(make_meta(t, states.SUCCESS, "after-reconnect", ready=True))
    finally:
        th.join(40)
        busy.release()
    assert out and out[0]["result"] == "after-reconnect"
    assert time.monotonic() - start < 2.0


def _child_wait(url: str, prefix: str, task_id: str, q: Any) -> None:
    b = backend_from_url(url, options={"global_keyprefix": prefix})
    try:
        q.put(b.wait_for(task_id, timeout=20)["result"])
    finally:
        b.close()


def test_forked_child_gets_its_own_listener(make: Callable[..., RedisBackend], prefix: str) -> None:
    b = make()
    t0, t1 = tid(), tid()
    b.store_meta(make_meta(t0, states.SUCCESS, 0, ready=True))
    assert b.wait_for(t0, timeout=5)["result"] == 0  # the parent's listener thread is running
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        q.put(b.wait_for(t1, timeout=20)["result"])

    p = ctx.Process(target=child)
    p.start()
    time.sleep(0.5)
    b.store_meta(make_meta(t1, states.SUCCESS, "forked", ready=True))
    try:
        assert q.get(timeout=30) == "forked"
    finally:
        p.join(30)
        q.close()
        q.join_thread()
    assert p.exitcode == 0
    assert b.wait_for(t1, timeout=5)["result"] == "forked"  # the parent still works


def test_wait_for_many_ten_thousand(make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(), make()
    ids = [tid() for _ in range(10_000)]

    def store() -> None:
        time.sleep(0.2)
        for i in range(0, len(ids), 500):
            writer.store_metas([make_meta(t, states.SUCCESS, n, ready=True)
                                for n, t in enumerate(ids[i:i + 500], start=i)])

    th = threading.Thread(target=store)
    th.start()
    start = time.monotonic()
    try:
        got = waiter.wait_for_many(ids, timeout=120)
    finally:
        th.join()
    assert [got[t]["result"] for t in ids] == list(range(10_000))
    assert time.monotonic() - start < 30
    listener = waiter._listener_obj
    assert listener is not None and not listener.boxes   # every channel released


def test_unreachable_server_is_an_operational_error() -> None:
    b = backend_from_url("redis://127.0.0.1:1/0", options={"socket_connect_timeout": 0.5})
    try:
        with pytest.raises(OperationalError, match="Redis result backend at redis://127.0.0.1:1/0"):
            b.connect()
        with pytest.raises(OperationalError):
            b.get_task_meta(tid())
    finally:
        b.close()


# -- URL parsing (no server needed) -------------------------------------------------------

def test_parse_redis_urls() -> None:
    kind, kw = parse_url("redis://user:p%40ss@example.com:6380/3?socket_timeout=2.5")
    assert kind == "pool"
    assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"], kw["socket_timeout"]) == \
        ("example.com", 6380, 3, "user", "p@ss", 2.5)
    _, kw = parse_url("rediss://h/0?ssl_cert_reqs=none")
    import ssl

    assert kw["ssl_cert_reqs"] == ssl.CERT_NONE and kw["ssl"] is True
    _, kw = parse_url("redis://h/0", {"ssl": {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_ca_certs": "/ca.pem"}})
    assert kw["ssl_cert_reqs"] == ssl.CERT_REQUIRED and kw["ssl_ca_certs"] == "/ca.pem"
    _, kw = parse_url("unix:///var/run/redis.sock?db=2")
    assert kw["path"] == "/var/run/redis.sock" and kw["db"] == 2
    _, kw = parse_url("redis://h", {"socket_timeout": 7, "global_keyprefix": "x"})
    assert kw["socket_timeout"] == 7.0 and "global_keyprefix" not in kw
    kind, kw = parse_url("sentinel://:pw@s1:26379/4;sentinel://s2:26380", {"master_name": "mymaster"})
    assert kind == "sentinel" and kw["hosts"] == [("s1", 26379), ("s2", 26380)]
    assert kw["master_name"] == "mymaster" and kw["master_kwargs"]["db"] == 4
    assert kw["master_kwargs"]["password"] == "pw"


@pytest.mark.parametrize(("url", "options"), [
    ("sentinel://s1:26379", {}), ("redis://h/notanumber", {}), ("redis://h/0?bogus=1", {}),
    ("rediss://h/0?ssl_cert_reqs=sometimes", {}), ("http://h/0", {}), ("unix://", {}),
])
def test_bad_urls(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_url(url, options)


def test_waiter_carries_on_when_another_thread_closes_the_backend(make: Callable[..., RedisBackend]) -> None:
    b = make()
    t = tid()
    out: list[Any] = []
    th = threading.Thread(target=lambda: out.append(b.wait_for(t, timeout=20)["result"]))
    th.start()
    time.sleep(0.5)
    b.close()
    time.sleep(0.3)
    b.store_meta(make_meta(t, states.SUCCESS, "still-here", ready=True))
    th.join(30)
    assert out == ["still-here"]
