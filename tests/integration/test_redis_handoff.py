"""Hand-off on Redis (brokers/_redis_publish.py): a publish finding an idle consumer of its
queue leases the message to it and pushes it on that consumer's wake list, so its BRPOP
returns the message itself.  Run once, never lost: a consumer that vanishes while idle has
what it was handed given back when its lease lapses; a released one gives it back at once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from semantics_support import Sem, children_of, open_sem, redis_client
from support import wait_for
from test_redis_broker import CELERY_MESSAGE, CELERY_TAG
from test_redis_broker import make as _make
from test_redis_broker import raw as _raw

from celeriac.brokers import PublishItem
from celeriac.brokers.redis import RedisBroker
from celeriac.protocol.message import build_task_message, decode_task_message


def env(n: int = 0, priority: int | None = None):
    return build_task_message("t.add", str(uuid.uuid4()), (n, n), priority=priority)


raw = _raw
make = _make


def _register_idle(b: RedisBroker, consumer: str, queue: str = "q") -> None:
    """A fetch that finds nothing: the consumer now counts as idle for about a second."""
    assert b.fetch([queue], 4, 0.0, consumer) == []


def test_an_idle_consumer_blocked_in_fetch_gets_the_message_from_its_brpop(make, raw):
    b = make()
    b.declare_queue("q")
    _register_idle(b, "warm-up")  # another consumer, registered idle too
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(b2.fetch(["q"], 4, 5.0, "c1")))
    b2 = make()
    t.start()
    p = b.prefix
    wait_for(lambda: raw.zscore(p + "celeriac.idle.q", "c1") is not None, 5, message="c1 idle")
    e = env(7)
    t0 = time.monotonic()
    b.publish(e, "q")
    t.join(5)
    assert time.monotonic() - t0 < 1.0  # not a poll, not a doorbell round
    [d] = got
    assert decode_task_message(d.envelope).id == e.headers["id"] and d.queue == "q" and not d.redelivered
    # leased exactly as a fetch leases: kombu's entry, our lease, the consumer's set; the list never had it
    assert json.loads(raw.hget(p + "unacked", d.tag))[1:] == ["", "q"]
    assert raw.hget(p + "celeriac.lease", d.tag) == b"c1\nq"
    assert raw.smembers(p + "celeriac.consumer.c1") == {d.tag.encode()}
    assert raw.llen(p + "q") == 0 and raw.zscore(p + "celeriac.idle.q", "c1") is None
    d.ack()
    assert raw.hlen(p + "unacked") == 0 and raw.zcard(p + "celeriac.leases") == 0 and raw.hlen(p + "celeriac.lease") == 0
    # run once: nothing left for anyone
    assert b2.fetch(["q"], 4, 0.3, "c1") == [] and b.fetch(["q"], 4, 0.0, "c2") == []


def test_a_handed_message_the_brpop_missed_is_returned_by_the_next_fetch(make, raw):
    b = make()
    b.declare_queue("q")
    _register_idle(b, "c1")  # idle, but not blocked right now (its BRPOP timed out)
    e = env(1)
    b.publish(e, "q")
    p = b.prefix
    wait_for(lambda: raw.llen(p + "celeriac.wake.c1") == 1, 5, message="the hand-off")
    assert raw.llen(p + "q") == 0
    [d] = b.fetch(["q"], 4, 0.0, "c1")
    assert decode_task_message(d.envelope).id == e.headers["id"]
    assert not raw.exists(p + "celeriac.wake.c1")
    d.ack()
    assert b.fetch(["q"], 4, 0.0, "c1") == []


def test_a_consumer_that_vanished_while_idle_has_its_message_given_back_after_its_lease(make, raw):
    ghost = make(lease_seconds=1.0)
    publisher = make(lease_seconds=30.0)  # the consumer's own lease counts, not the publisher's
    survivor = make(lease_seconds=1.0)
    ghost.declare_queue("q")
    _register_idle(ghost, "ghost")  # ... and then it is SIGKILLed: it never fetches again
    e = env(2)
    publisher.publish(e, "q")
    publisher._lane.confirm()
    p = publisher.prefix
    assert raw.llen(p + "celeriac.wake.ghost") == 1  # handed to the ghost
    t0 = time.monotonic()
    got: list[Any] = []
    while not got and time.monotonic() - t0 < 10:
        got = survivor.fetch(["q"], 4, 0.5, "survivor")
    [d] = got
    assert time.monotonic() - t0 < 1.0 + 2.5  # lease + the reclaim interval and a block
    assert decode_task_message(d.envelope).id == e.headers["id"] and d.redelivered
    d.ack()
    assert survivor.fetch(["q"], 4, 0.0, "survivor") == []
    assert raw.hlen(p + "unacked") == 0


def test_release_takes_a_consumer_off_the_idle_set_and_gives_back_what_it_was_handed(make, raw):
    b = make()
    b.declare_queue("q")
    _register_idle(b, "c1")
    first = env(1)
    b.publish(first, "q")
    b._lane.confirm()
    p = b.prefix
    assert raw.llen(p + "celeriac.wake.c1") == 1
    assert b.release_consumer("c1") == 1
    assert raw.llen(p + "q") == 1 and not raw.exists(p + "celeriac.wake.c1")
    assert raw.zcard(p + "celeriac.idle.q") == 0 and not raw.hexists(p + "celeriac.idle_of", "c1")
    second = env(2)
    b.publish(second, "q")  # nobody idle: on the list
    [d1, d2] = b.fetch(["q"], 4, 0.0, "c2")
    assert [decode_task_message(d.envelope).id for d in (d1, d2)] == [first.headers["id"], second.headers["id"]]
    assert d1.redelivered and not d2.redelivered


def test_a_lapsed_registration_is_not_handed_anything(make, raw):
    b = make()
    b.declare_queue("q")
    p = b.prefix
    raw.zadd(p + "celeriac.idle.q", {"old": time.time() - 5})
    b.publish(env(1), "q")
    b._lane.confirm()
    assert raw.llen(p + "q") == 1 and not raw.exists(p + "celeriac.wake.old")
    assert not raw.exists(p + "celeriac.idle.q")


def test_consumers_of_several_queues_and_celery_clients_keep_the_plain_path(make, raw):
    b = make()
    b.declare_queue("a")
    b.declare_queue("q")
    p = b.prefix
    assert b.fetch(["a", "q"], 4, 0.0, "multi") == []
    assert not raw.exists(p + "celeriac.idle.q") and not raw.exists(p + "celeriac.idle.a")
    _register_idle(b, "c1")
    raw.lpush(p + "q", CELERY_MESSAGE)  # a Celery client's publish: plain LPUSH, not handed
    assert not raw.exists(p + "celeriac.wake.c1")
    [d] = b.fetch(["q"], 4, 1.0, "c1")  # found by polling, as before
    assert d.tag == CELERY_TAG
    d.ack()


def test_handoff_can_be_turned_off(make, raw):
    b = make(handoff=False)
    b.declare_queue("q")
    _register_idle(b, "c1")
    b.publish(env(1), "q")
    b._lane.confirm()
    p = b.prefix
    assert raw.llen(p + "q") == 1 and not raw.exists(p + "celeriac.wake.c1")


def test_a_priority_message_behind_a_handed_one_keeps_its_order(make, raw):
    """Handed only when the consumer found all its lists empty: the handed message is the
    oldest; what comes next queues by priority as usual."""
    b = make()
    b.declare_queue("q")
    _register_idle(b, "c1")
    low, high, mid = env(1, priority=0), env(2, priority=9), env(3, priority=6)
    for e in (low, mid, high):
        b.publish(e, "q")
    got = b.fetch(["q"], 4, 0.0, "c1")
    ids = [decode_task_message(d.envelope).id for d in got]
    assert ids == [low.headers["id"], mid.headers["id"], high.headers["id"]]  # kombu: step 0 first
    b.ack(got)


def test_no_hand_off_while_the_doorbell_says_messages_wait(make, raw):
    """A bulk send since the consumer's last fetch rang the doorbell: the next single
    publish queues behind it instead of overtaking it."""
    b = make()
    b.declare_queue("q")
    _register_idle(b, "c1")
    bulk = [env(i) for i in range(3)]
    b.publish_many([PublishItem(e, "q") for e in bulk])
    single = env(9)
    b.publish(single, "q")
    b._lane.confirm()
    p = b.prefix
    assert raw.llen(p + "q") == 4 and not raw.exists(p + "celeriac.wake.c1")
    got = b.fetch(["q"], 4, 0.0, "c1")
    assert [decode_task_message(d.envelope).id for d in got] == [e.headers["id"] for e in [*bulk, single]]
    b.ack(got)


@pytest.fixture
def sem(tmp_path: Path) -> Iterator[Sem]:
    yield from open_sem(tmp_path, "redis")


def _idle_consumers(sem: Sem) -> list[str]:
    key = sem.broker["options"]["global_keyprefix"] + "celeriac.idle.celery"
    with redis_client() as r:
        return [m.decode() for m in r.zrangebyscore(key, time.time(), "+inf")]


def test_a_worker_sigkilled_while_idle_a_task_handed_to_it_runs_on_a_survivor(sem: Sem):
    worker = sem.worker("-c", "1", lease=2)
    assert sem.send("add", 1, 2).get(timeout=30) == 3
    children = children_of(worker.proc.pid)
    wait_for(lambda: _idle_consumers(sem), 10, message="the worker's child registered idle")
    for pid in [worker.proc.pid, *children]:
        os.kill(pid, signal.SIGKILL)
    worker.proc.wait(10)
    res = sem.send("add", 2, 3)  # handed to the dead child (its registration has not lapsed)
    prefix = sem.broker["options"]["global_keyprefix"]
    with redis_client() as r:
        wait_for(lambda: r.hlen(prefix + "celeriac.lease") == 1, 5, message="the hand-off")
        assert r.llen(prefix + "celery") == 0
    t0 = time.monotonic()
    sem.worker("-c", "1", lease=2)
    assert res.get(timeout=30) == 5
    assert time.monotonic() - t0 < 15  # the survivor's start-up, the 2 s lease and a sweep


def test_sequential_round_trips_through_an_idle_worker_run_each_task_once(sem: Sem):
    sem.worker("-c", "2")
    assert sem.send("add", 0, 0).get(timeout=30) == 0
    for i in range(50):
        assert sem.send("add", i, 1).get(timeout=10) == i + 1
    prefix = sem.broker["options"]["global_keyprefix"]
    with redis_client() as r:
        wait_for(lambda: r.hlen(prefix + "unacked") == 0, 10, message="every message acked")
        assert r.llen(prefix + "celery") == 0



@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio"])
def test_a_warm_stop_leaves_no_idle_registration_and_a_task_sent_after_it_is_kept(sem: Sem, pool: str):
    """Whatever the pool, a stopped worker's consumers are released: nothing can be handed
    to them afterwards, so a task sent then waits on the list for the next worker."""
    worker = sem.worker("-c", "2", "-P", pool)
    assert sem.send("add", 1, 2).get(timeout=30) == 3
    wait_for(lambda: _idle_consumers(sem), 10, message="an idle consumer")
    assert worker.stop() == 0
    prefix = sem.broker["options"]["global_keyprefix"]
    with redis_client() as r:
        assert r.zcard(prefix + "celeriac.idle.celery") == 0 and r.hlen(prefix + "celeriac.idle_of") == 0
        res = sem.send("add", 2, 3)
        wait_for(lambda: r.llen(prefix + "celery") == 1, 5, message="the task on the list")
        assert r.hlen(prefix + "unacked") == 0
    sem.worker("-c", "1", "-P", pool)
    assert res.get(timeout=30) == 5
