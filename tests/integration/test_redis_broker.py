"""The Redis broker against real servers: kombu's wire layout, Celery messages,
ack emulation, delayed messages, restarts.  Raw redis-py is used to look at and
write the bytes a Celery client or worker would."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import _unavailable

from celeriac._redis_url import parse_url
from celeriac.brokers import PublishItem, broker_from_url
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import ImproperlyConfigured, OperationalError
from celeriac.protocol.message import build_task_message, decode_task_message

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")
SEP = "\x06\x16"

# celery-wire.md 1.7: add.delay(2, 3) as a Celery 5.7 client LPUSHes it onto "celery".
CELERY_MESSAGE = (
    '{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", '
    '"content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "wiretasks.add", '
    '"id": "16d656aa-9590-4989-989a-6fa4c2d24fab", "shadow": null, "eta": null, "expires": null, "group": null, '
    '"group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "16d656aa-9590-4989-989a-6fa4c2d24fab", '
    '"parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen16763@vm", "ignore_result": false, '
    '"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": '
    '"16d656aa-9590-4989-989a-6fa4c2d24fab", "reply_to": "27888168-0f15-3298-a396-8fe4f9a82fa7", "delivery_mode": 2, '
    '"delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", '
    '"delivery_tag": "451f0ab9-e905-448c-8ce6-d128382b8d36"}}'
)
CELERY_TAG = "451f0ab9-e905-448c-8ce6-d128382b8d36"


def env(n: int = 0, priority: int | None = None, task: str = "t.add"):
    return build_task_message(task, str(uuid.uuid4()), (n, n), priority=priority)


def _cleanup(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.ping()
    except redis.exceptions.RedisError as exc:
        r.close()
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield r
    r.close()


@pytest.fixture
def make(raw: redis.Redis) -> Iterator[Callable[..., RedisBroker]]:
    """Brokers sharing one fresh key prefix; their keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    made: list[RedisBroker] = []

    def factory(lease_seconds: float = 30.0, **options: Any) -> RedisBroker:
        b = broker_from_url(REDIS_URL, lease_seconds=lease_seconds,
                            options={"global_keyprefix": prefix, **options})
        assert isinstance(b, RedisBroker)
        made.append(b)
        return b

    yield factory
    _cleanup(REDIS_URL, prefix)
    for b in made:
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A throw-away redis-server (no persistence) that tests may kill and restart."""

    def __init__(self, tmp: Path, args: tuple[str, ...] = (), tls: dict[str, Any] | None = None) -> None:
        self.port = _free_port()
        self.sock = str(tmp / f"redis{self.port}.sock")
        self.args, self.tls = args, tls or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port)]
        else:
            ports = ["--port", str(self.port), "--unixsocket", self.sock, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            ["redis-server", *self.args, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, **self.tls) as r:
                    r.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: no goodbye to the clients
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


# -- the wire layout ----------------------------------------------------------------


@pytest.mark.redis
def test_publish_writes_kombus_layout(make, raw):
    b = make()
    p = b.prefix
    queue = "wire" + uuid.uuid4().hex[:6]
    envs = {0: env(0, priority=0), 3: env(1, priority=5), 6: env(2, priority=7), 9: env(3, priority=9)}
    b.publish_many([PublishItem(e, queue) for e in envs.values()])
    for step, e in envs.items():
        key = p + queue + (f"{SEP}{step}" if step else "")
        items = raw.lrange(key, 0, -1)
        assert len(items) == 1, key
        data = json.loads(items[0])
        assert list(data) == ["body", "content-encoding", "content-type", "headers", "properties"]
        assert base64.b64decode(data["body"]) == e.body
        assert data["content-type"] == "application/json" and data["content-encoding"] == "utf-8"
        assert data["headers"] == e.headers and len(data["headers"]) == 19
        props = data["properties"]
        assert props["delivery_info"] == {"exchange": "", "routing_key": queue}
        assert props["body_encoding"] == "base64"
        assert props["priority"] == e.priority
        assert props["correlation_id"] == e.headers["id"] and props["delivery_mode"] == 2
        assert str(uuid.UUID(props["delivery_tag"])) == props["delivery_tag"]
    member = f"{queue}{SEP}{SEP}{queue}".encode()
    assert raw.smembers(f"{p}_kombu.binding.{queue}") == {member}
    assert raw.smembers(f"{p}_kombu.binding_permanent.{queue}") == {member}
    # FIFO within a step: LPUSH by the producer, taken from the right by consumers
    more = [env(i) for i in range(3)]
    b.publish_many([PublishItem(e, queue) for e in more])
    tail = [json.loads(x)["headers"]["id"] for x in reversed(raw.lrange(p + queue, 0, -1))]
    assert tail == [envs[0].headers["id"]] + [e.headers["id"] for e in more]


@pytest.mark.redis
def test_celery_message_is_fetched_and_recorded_like_kombu(make, raw):
    b = make()
    p = b.prefix
    raw.lpush(p + "celery", CELERY_MESSAGE)
    t0 = time.time()
    [d] = b.fetch(["celery"], 10, 1.0, "worker-1")
    msg = decode_task_message(d.envelope)
    assert (msg.task, msg.id, msg.args, msg.kwargs) == (
        "wiretasks.add", "16d656aa-9590-4989-989a-6fa4c2d24fab", [2, 3], {})
    assert d.tag == CELERY_TAG and d.queue == "celery" and not d.redelivered
    # kombu's ack emulation, exactly: unacked[tag] = [envelope as received, exchange, routing key]
    stored = json.loads(raw.hget(p + "unacked", CELERY_TAG))
    assert stored == [json.loads(CELERY_MESSAGE), "", "celery"]
    assert abs(raw.zscore(p + "unacked_index", CELERY_TAG) - t0) < 5
    # and our lease
    assert raw.zscore(p + "celeriac.leases", CELERY_TAG) == pytest.approx(t0 + 30, abs=5)
    assert raw.hget(p + "celeriac.lease", CELERY_TAG) == b"worker-1\ncelery"
    assert raw.smembers(p + "celeriac.consumer.worker-1") == {CELERY_TAG.encode()}
    assert b.stats("celery").leased == 1
    d.ack()
    assert raw.hlen(p + "unacked") == 0 and raw.zcard(p + "unacked_index") == 0
    assert raw.zcard(p + "celeriac.leases") == 0 and not raw.exists(p + "celeriac.consumer.worker-1")
    assert b.stats("celery").leased == 0


@pytest.mark.redis
def test_celery_message_published_meanwhile_is_picked_up_by_polling(make, raw):
    b = make()
    threading.Timer(0.3, lambda: raw.lpush(b.prefix + "celery", CELERY_MESSAGE)).start()
    t0 = time.monotonic()
    [d] = b.fetch(["celery"], 1, 5.0, "c1")
    assert time.monotonic() - t0 < 0.3 + b.polling_interval + 0.5
    d.ack()


@pytest.mark.redis
def test_a_celery_workers_restore_and_our_lease_expiry_never_duplicate(make, raw):
    b1, b2 = make(lease_seconds=0.5), make(lease_seconds=0.5)
    p, queue = b1.prefix, "dup"
    e = env(7)
    b1.publish(e, queue)
    [d] = b1.fetch([queue], 1, 1.0, "dead")
    # What a Celery worker's visibility-timeout restore does with the entry (celery-wire 2.4)
    [(tag, _score)] = raw.zrange(p + "unacked_index", 0, -1, withscores=True)
    stored = raw.hget(p + "unacked", tag)
    message, _ex, rk = json.loads(stored)
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True
    with raw.pipeline(transaction=True) as pipe:
        pipe.zrem(p + "unacked_index", tag).hdel(p + "unacked", tag).rpush(p + rk, json.dumps(message))
        pipe.execute()
    time.sleep(1.1)  # our lease lapses too: its sweep must find the entry gone and push nothing
    [d2] = b2.fetch([queue], 10, 2.0, "alive")
    assert d2.envelope.headers["id"] == e.headers["id"] and d2.redelivered and d2.tag == d.tag
    assert b2.fetch([queue], 10, 0.3, "alive") == []
    d2.ack()
    s = b2.stats(queue)
    assert (s.ready, s.leased, s.delayed) == (0, 0, 0)


@pytest.mark.redis
@pytest.mark.parametrize("exchange", ["", "celery"])
def test_messages_a_celery_worker_abandoned_are_restored_after_the_visibility_timeout(make, raw, exchange):
    b = make(lease_seconds=30, visibility_timeout=1)
    p = b.prefix
    b.declare_queue("celery")  # the binding a Celery consumer writes: exchange "celery" -> queue "celery"
    message = json.loads(CELERY_MESSAGE)
    message["properties"]["delivery_info"]["exchange"] = exchange
    # What a Celery worker records when it takes the message (celery-wire 2.4), then it dies
    with raw.pipeline(transaction=True) as pipe:
        pipe.zadd(p + "unacked_index", {CELERY_TAG: time.time() - 2})
        pipe.hset(p + "unacked", CELERY_TAG, json.dumps([message, exchange, "celery"]))
        pipe.execute()
    b.publish(env(), "mine")
    [mine] = b.fetch(["mine"], 1, 1.0, "c1")  # ours: old enough soon, but leased, so never swept
    time.sleep(1.1)
    [d] = b.fetch(["celery"], 1, 1.0, "c2")
    assert d.tag == CELERY_TAG and d.redelivered
    assert decode_task_message(d.envelope).args == [2, 3]
    assert b.stats("mine").leased == 1 and b.size("mine") == 0
    b.ack([d, mine])


@pytest.mark.redis
def test_a_failing_move_leaves_the_message_where_it_was(make, raw):
    b = make()
    p = b.prefix
    b.publish(env(1), "broken", not_before=time.time() + 0.1)
    b.publish(env(2), "held")
    [held] = b.fetch(["held"], 1, 1.0, "c1")
    time.sleep(0.2)
    raw.set(p + "broken", "not a list")  # the delayed message's target cannot take it
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        b.fetch(["held"], 1, 0.0, "c1")
    assert raw.zcard(p + "celeriac.delayed.broken") == 1 and raw.zcard(p + "celeriac.delayed") == 1
    raw.delete(p + "held")
    raw.set(p + "held", "not a list")  # nor can the held message's queue
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        b.release_consumer("c1")
    assert raw.hexists(p + "unacked", held.tag) and raw.zscore(p + "celeriac.leases", held.tag)
    raw.delete(p + "broken", p + "held")
    assert b.release_consumer("c1") == 1
    got = b.fetch(["broken", "held"], 10, 1.0, "c2")
    assert sorted(d.envelope.body for d in got) == sorted([env(1).body, env(2).body])
    b.ack(got)


EDGE_CASES = [
    CELERY_MESSAGE.replace('"priority": 0', '"priority": 5'),
    json.dumps({"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {},
                "properties": {"delivery_info": {}, "body_encoding": "base64", "delivery_tag": "t-empty"}}),
    json.dumps({"body": 'tricky "headers": {"x": "}"} \\" {[', "content-type": "application/json",
                "headers": {"task": "a\"b}", "id": "\u00e9\u4e2d", "redelivered": False, "stamps": {"headers": []},
                            "l": [1, {"a": "]"}]},
                "properties": {"delivery_tag": "t-tricky", "priority": 1, "x": [],
                               "delivery_info": {"exchange": "ex", "routing_key": "rk", "redelivered": False}}}),
    '  {"headers" :{ "id" : "spaced" } , "body":"x","properties":{"delivery_tag":"t-spaced",'
    '"delivery_info":{"routing_key":"q","exchange":""},"priority":9}}  ',
    json.dumps({"body": "x", "headers": {"id": "no-info"}, "properties": {"delivery_tag": "t-noinfo"}}),
]


@pytest.mark.redis
def test_given_back_messages_are_marked_redelivered_byte_for_byte_like_kombu(make, raw):
    b = make()
    p, queue = b.prefix, "edge"
    for text in EDGE_CASES:
        prio = json.loads(text)["properties"].get("priority", 0)
        raw.lpush(p + queue + (f"{SEP}{b.step_for(prio)}" if b.step_for(prio) else ""), text)
    got = b.fetch([queue], 10, 1.0, "gone")
    assert len(got) == len(EDGE_CASES)
    assert b.release_consumer("gone") == len(EDGE_CASES)
    assert raw.hlen(p + "unacked") == 0 and raw.zcard(p + "celeriac.leases") == 0
    back = {}
    for step in b.steps:
        for item in raw.lrange(b.queue_key(queue, step), 0, -1):
            data = json.loads(item)
            back[data["properties"]["delivery_tag"]] = (step, data)
    assert len(back) == len(EDGE_CASES)
    for text in EDGE_CASES:
        want = json.loads(text)
        want["headers"]["redelivered"] = True
        if "delivery_info" in want["properties"]:
            want["properties"]["delivery_info"]["redelivered"] = True
        step, data = back[want["properties"]["delivery_tag"]]
        assert data == want
        assert step == b.step_for(want["properties"].get("priority", 0))
    again = b.fetch([queue], 10, 1.0, "c2")
    assert len(again) == len(EDGE_CASES) and all(d.redelivered for d in again)
    b.ack(again)


@pytest.mark.redis
def test_undecodable_message_goes_to_dead_letters_not_nowhere(make, raw):
    b = make()
    raw.lpush(b.prefix + "bad", "this is not json")
    raw.lpush(b.prefix + "bad", '{"properties": {"delivery_tag": "t1"}}')  # JSON, but no body
    b.publish(env(1), "bad")
    got = b.fetch(["bad"], 10, 1.0, "c1")
    assert len(got) == 1
    dead = b.dead_letters()
    assert sorted(d.raw for d in dead) == sorted(['this is not json', '{"properties": {"delivery_tag": "t1"}}'])
    assert all(d.reason.startswith("DecodeError") and d.queue == "bad" for d in dead)
    assert b.stats("bad").leased == 1
    got[0].ack()
    assert raw.hlen(b.prefix + "unacked") == 0


@pytest.mark.redis
def test_delayed_messages_wait_in_a_zset_and_move_when_due(make, raw):
    b = make()
    p, queue = b.prefix, "later"
    e = env(1, priority=6)
    due = time.time() + 0.5
    b.publish(e, queue, not_before=due)
    assert raw.llen(b.queue_key(queue, 6)) == 0
    [(member, score)] = raw.zrange(p + "celeriac.delayed", 0, -1, withscores=True)
    assert score == pytest.approx(due)
    assert raw.zrange(p + "celeriac.delayed.later", 0, -1) == [member]
    step, length, rest = member.decode().split("|", 2)
    assert (step, rest[: int(length)]) == ("6", queue)
    assert json.loads(rest[int(length):])["headers"]["id"] == e.headers["id"]
    assert b.stats(queue).delayed == 1
    [d] = b.fetch([queue], 1, 3.0, "c1")
    assert time.time() >= due - 0.05
    assert d.envelope.headers["id"] == e.headers["id"] and not d.redelivered
    assert raw.zcard(p + "celeriac.delayed") == 0 and raw.zcard(p + "celeriac.delayed.later") == 0
    d.ack()


@pytest.mark.redis
def test_requeue_pushes_to_the_front_with_kombus_flags(make, raw):
    b = make()
    queue = "rq"
    first, second = env(1), env(2)
    b.publish_many([PublishItem(first, queue), PublishItem(second, queue)])
    [d] = b.fetch([queue], 1, 1.0, "c1")
    b.publish(env(3), queue)
    d.requeue()
    data = json.loads(raw.lindex(b.queue_key(queue), -1))  # the right end: consumed next
    assert data["headers"]["id"] == first.headers["id"]
    assert data["headers"]["redelivered"] is True and data["properties"]["delivery_info"]["redelivered"] is True
    assert data["properties"]["delivery_tag"] == d.tag
    [d2] = b.fetch([queue], 1, 1.0, "c1")
    assert d2.envelope.headers["id"] == first.headers["id"] and d2.redelivered
    d.requeue()  # d and d2 are the same message (same tag), leased to c1 again
    assert b.size(queue) == 3
    # a requeue from a consumer that lost the lease must not duplicate the message
    [d3] = b.fetch([queue], 1, 1.0, "c2")
    stale = type(d3)(d3.envelope, d3.queue, d3.tag, b, raw="c1")
    b.requeue([stale])
    assert b.size(queue) == 2 and b.stats(queue).leased == 1
    d3.ack()


@pytest.mark.redis
def test_heartbeat_refreshes_leases_and_unacked_index(make, raw):
    b = make(lease_seconds=5)
    p = b.prefix
    b.publish(env(), "hb")
    [d] = b.fetch(["hb"], 1, 1.0, "c1")
    lease0 = raw.zscore(p + "celeriac.leases", d.tag)
    index0 = raw.zscore(p + "unacked_index", d.tag)
    time.sleep(0.2)
    b.heartbeat("c1", [d])
    assert raw.zscore(p + "celeriac.leases", d.tag) > lease0 + 0.1
    assert raw.zscore(p + "unacked_index", d.tag) > index0 + 0.1  # a Celery restore would not take it
    assert raw.sismember(p + "celeriac.started", d.tag)
    assert [x.tag for x in b.leased("c1")] == [d.tag] and b.leased("c1")[0].started
    assert b.leased("other") == []
    d.ack()
    assert not raw.sismember(p + "celeriac.started", d.tag)


@pytest.mark.redis
def test_dead_letter_record_format_and_replay(make, raw):
    b = make()
    e = env(task="no.such.task")
    b.publish(e, "dl")
    [d] = b.fetch(["dl"], 1, 1.0, "c1")
    d.reject("NotRegistered('no.such.task')")
    entry = json.loads(raw.lindex(b.prefix + "celeriac.dead_letters", 0))
    assert set(entry) == {"dead_id", "reason", "queue", "task", "id", "failed_at", "envelope"}
    assert (entry["task"], entry["id"], entry["queue"]) == ("no.such.task", e.headers["id"], "dl")
    assert json.loads(entry["envelope"])["headers"] == e.headers
    assert raw.hlen(b.prefix + "unacked") == 0
    assert b.replay_dead_letter(entry["dead_id"])
    assert not b.replay_dead_letter(entry["dead_id"])
    assert b.dead_letters() == []
    [d2] = b.fetch(["dl"], 1, 1.0, "c1")
    assert d2.envelope.headers["id"] == e.headers["id"]
    d2.ack()


@pytest.mark.redis
def test_purge_removes_ready_and_delayed_but_not_leased(make, raw):
    b = make()
    b.publish_many([PublishItem(env(i, priority=i * 3), "pg") for i in range(4)])
    b.publish(env(), "pg", not_before=time.time() + 60)
    b.publish(env(), "other", not_before=time.time() + 60)
    [held] = b.fetch(["pg"], 1, 1.0, "c1")
    assert b.purge("pg") == 4
    s = b.stats("pg")
    assert (s.ready, s.delayed, s.leased) == (0, 0, 1)
    assert raw.zcard(b.prefix + "celeriac.delayed") == 1 and b.stats("other").delayed == 1
    held.ack()


@pytest.mark.redis
def test_token_bucket_is_shared_by_every_broker_object(make, raw):
    b1, b2 = make(), make()
    assert b1.capabilities.global_rate_limit
    assert b1.acquire_tokens("task:t.add", rate=10, burst=2) == 0.0
    assert b2.acquire_tokens("task:t.add", rate=10, burst=2) == 0.0
    wait = b1.acquire_tokens("task:t.add", rate=10, burst=2)
    assert 0.05 < wait <= 0.1
    assert b2.acquire_tokens("task:other", rate=10, burst=2) == 0.0  # buckets are per key
    time.sleep(wait + 0.01)
    assert b2.acquire_tokens("task:t.add", rate=10, burst=2) == 0.0
    assert 0 < raw.pttl(b1.prefix + "celeriac.bucket.task:t.add") <= 1200
    with pytest.raises(ValueError):
        b1.acquire_tokens("x", rate=0)


# -- a countdown longer than the lease -------------------------------------------


@pytest.mark.redis
def test_countdown_longer_than_the_lease_runs_exactly_once(make):
    b1, b2 = make(lease_seconds=1.0), make(lease_seconds=1.0)
    e = env(42)
    b1.publish(e, "cd", not_before=time.time() + 3.0)
    got: list[tuple[str, str, bool]] = []
    stop = time.monotonic() + 7.5

    def consume(b: RedisBroker, name: str) -> None:
        while time.monotonic() < stop:
            for d in b.fetch(["cd"], 1, 0.5, name):
                got.append((name, d.envelope.headers["id"], d.redelivered))
                for _ in range(10):  # "runs" for 3 s, three times the lease, heartbeating
                    time.sleep(0.3)
                    b.heartbeat(name, [d])
                d.ack()

    threads = [threading.Thread(target=consume, args=(b, n)) for b, n in ((b1, "w1"), (b2, "w2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and got[0][1:] == (e.headers["id"], False)
    assert b1.stats("cd").leased == 0


# -- restarts, sockets, URLs -----------------------------------------------------


@pytest.mark.redis
def test_broker_survives_a_redis_restart(private_redis):
    b = RedisBroker(private_redis.url, lease_seconds=5)
    try:
        b.publish(env(1), "q")
        [d] = b.fetch(["q"], 1, 1.0, "c1")
        d.ack()
        private_redis.kill()
        for call in (lambda: b.fetch(["q"], 1, 0.2, "c1"), lambda: b.publish(env(2), "q"),
                     lambda: b.heartbeat("c1"), lambda: b.stats("q")):
            with pytest.raises(OperationalError, match=f"127.0.0.1:{private_redis.port}/0"):
                call()
        private_redis.start()  # same port, empty: scripts and bindings must be loaded again
        e = env(3)
        b.publish(e, "q")
        [d] = b.fetch(["q"], 1, 1.0, "c1")
        assert d.envelope.headers["id"] == e.headers["id"]
        b.heartbeat("c1", [d])
        d.ack()
        with redis.Redis(port=private_redis.port) as r:
            assert r.smembers("_kombu.binding.q") == {f"q{SEP}{SEP}q".encode()}
    finally:
        b.close()


@pytest.mark.redis
@pytest.mark.parametrize("scheme", ["unix", "redis+socket"])
def test_unix_socket_urls(private_redis, scheme):
    b = broker_from_url(f"{scheme}://{private_redis.sock}?db=2")
    try:
        assert isinstance(b, RedisBroker) and b.where == f"unix://{private_redis.sock}?db=2"
        b.publish(env(1), "sockq")
        [d] = b.fetch(["sockq"], 1, 1.0, "c1")
        d.ack()
        with redis.Redis(unix_socket_path=private_redis.sock, db=2) as r:
            assert r.exists("_kombu.binding.sockq")
    finally:
        b.close()


@pytest.mark.redis
def test_rediss_with_broker_use_ssl(tmp_path):
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        _unavailable("needs redis-server and openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = PrivateRedis(tmp_path, ("--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                     "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
                          tls={"ssl": True, "ssl_ca_certs": str(cert)})
    url = f"rediss://127.0.0.1:{server.port}/0"
    b = broker_from_url(url, options={"ssl": {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_ca_certs": str(cert)}})
    untrusted = broker_from_url(url, options={"ssl": {"ssl_cert_reqs": "required"}})
    try:
        server.start()
        assert isinstance(b, RedisBroker) and b.where == url
        b.publish(env(5), "tlsq")
        [d] = b.fetch(["tlsq"], 1, 1.0, "c1")
        d.ack()
        with pytest.raises(OperationalError, match=f"127.0.0.1:{server.port}/0"):
            untrusted.connect()  # the server's certificate is not signed by a known CA
    finally:
        b.close()
        untrusted.close()
        server.kill()


@pytest.mark.redis
def test_sentinel_url_finds_the_master(private_redis, tmp_path):
    port = _free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {private_redis.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.2) as r:
                    r.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        dead = _free_port()
        b = broker_from_url(f"sentinel://127.0.0.1:{port};sentinel://127.0.0.1:{dead}/1",
                            options={"master_name": "mymaster"})
        assert isinstance(b, RedisBroker) and "mymaster" in b.where
        b.publish(env(1), "sq")
        [d] = b.fetch(["sq"], 1, 1.0, "c1")
        d.ack()
        with redis.Redis(port=private_redis.port, db=1) as r:
            assert r.exists("_kombu.binding.sq")
    finally:
        if b is not None:
            b.close()
        proc.kill()
        proc.wait()


def test_unreachable_server_raises_operational_error_naming_it():
    port = _free_port()
    b = RedisBroker(f"redis://127.0.0.1:{port}/3", options={"socket_connect_timeout": 1})
    try:
        with pytest.raises(OperationalError, match=f"redis://127.0.0.1:{port}/3"):
            b.connect()
    finally:
        b.close()


def test_visibility_timeout_is_the_lease_unless_given():
    b1 = broker_from_url("redis://127.0.0.1:1/0", options={"visibility_timeout": 77})
    b2 = broker_from_url("redis://127.0.0.1:1/0", lease_seconds=5, options={"visibility_timeout": 77})
    b3 = broker_from_url("redis://127.0.0.1:1/0")
    assert (b1.lease_seconds, b2.lease_seconds, b3.lease_seconds) == (77, 5, 30)
    for b in (b1, b2, b3):
        b.close()


def test_url_parsing():
    kind, kw = parse_url("redis://user:p%40ss@example.com:6380/4?socket_timeout=2.5",
                         {"max_connections": 7, "health_check_interval": 10})
    assert kind == "pool"
    assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == (
        "example.com", 6380, 4, "user", "p@ss")
    assert (kw["socket_timeout"], kw["max_connections"], kw["health_check_interval"]) == (2.5, 7, 10)
    _, kw = parse_url("redis://localhost")
    assert (kw["host"], kw["port"], kw.get("db", 0)) == ("localhost", 6379, 0)

    import ssl

    _, kw = parse_url("rediss://:pw@h:6390/1?ssl_cert_reqs=CERT_NONE")
    assert kw["ssl"] is True and kw["ssl_cert_reqs"] == ssl.CERT_NONE
    _, kw = parse_url("redis://h/0", {"ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem",
                                              "certfile": "/c.pem", "keyfile": "/k.pem"}})
    assert kw["ssl"] is True
    assert (kw["ssl_cert_reqs"], kw["ssl_ca_certs"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (
        ssl.CERT_REQUIRED, "/ca.pem", "/c.pem", "/k.pem")
    _, kw = parse_url("unix:///var/run/redis.sock?db=3")
    assert (kw["path"], kw["db"]) == ("/var/run/redis.sock", 3)

    kind, kw = parse_url("sentinel://:secret@s1:26379;sentinel://s2:26380/2", {"master_name": "mymaster"})
    assert kind == "sentinel" and kw["hosts"] == [("s1", 26379), ("s2", 26380)]
    assert kw["master_name"] == "mymaster"
    assert (kw["master_kwargs"]["db"], kw["master_kwargs"]["password"]) == (2, "secret")

    for bad, opts in [("sentinel://s1:26379", {}), ("redis://h/notadb", {}), ("redis://h/0?bogus=1", {}),
                      ("rediss://h/0", {"ssl": {"ssl_cert_reqs": "sometimes"}})]:
        with pytest.raises(ImproperlyConfigured):
            parse_url(bad, opts)
