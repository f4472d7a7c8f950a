"""The contract every broker passes: memory, SQLite, Redis (and later AMQP)."""

from __future__ import annotations

import threading
import time
import uuid

from celeriac.brokers import PublishItem
from celeriac.protocol.bulk import bulk_messages
from celeriac.protocol.message import build_task_message


def env(n: int = 0, priority: int | None = None, task: str = "t.add"):
    return build_task_message(task, str(uuid.uuid4()), (n, n), priority=priority)


def q() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


def test_publish_fetch_ack(broker_factory):
    b = broker_factory()
    queue = q()
    e = env(1)
    b.publish(e, queue)
    [d] = b.fetch([queue], 10, 1.0, "c1")
    assert d.queue == queue
    assert d.envelope.headers["id"] == e.headers["id"]
    assert d.envelope.body == e.body
    assert not d.redelivered
    assert b.stats(queue).leased == 1
    d.ack()
    assert b.fetch([queue], 10, 0.05, "c1") == []
    s = b.stats(queue)
    assert (s.ready, s.leased, s.delayed) == (0, 0, 0)


def test_fifo_and_batch(broker_factory):
    b = broker_factory()
    queue = q()
    envs = [env(i) for i in range(25)]
    b.publish_many([PublishItem(e, queue) for e in envs])
    got = b.fetch([queue], 10, 1.0, "c1")
    assert [d.envelope.headers["id"] for d in got] == [e.headers["id"] for e in envs[:10]]
    rest = b.fetch([queue], 100, 1.0, "c1")
    assert len(rest) == 15
    b.ack(got + rest)
    assert b.size(queue) == 0


def test_publish_bulk_fifo_priority_and_fetch(broker_factory):
    b = broker_factory()
    queue = q()
    calls = [((i, "é"), {"k": [i]} if i % 2 else {}) for i in range(25)]
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    batch = bulk_messages(env(0, priority=9), embed, calls)
    urgent = bulk_messages(env(0, priority=0), embed, calls[:2])
    assert batch is not None and urgent is not None
    b.publish_bulk(batch, queue)
    b.publish_bulk(urgent, queue)
    assert b.stats(queue).ready == 27
    got = b.fetch([queue], 100, 1.0, "c1")
    expected = urgent.envelopes() + batch.envelopes()  # lower priority number first, then FIFO
    assert [d.envelope.headers["id"] for d in got] == [e.headers["id"] for e in expected]
    for d, e in zip(got, expected, strict=True):
        assert d.envelope.body == e.body
        assert d.envelope.headers == e.headers
    b.ack(got)
    assert b.size(queue) == 0


def test_priority_lower_number_first(broker_factory):
    b = broker_factory()
    queue = q()
    low, mid, high = env(1, priority=9), env(2, priority=5), env(3, priority=0)
    for e in (low, mid, high):
        b.publish(e, queue)
    got = []
    for _ in range(3):
        got += b.fetch([queue], 1, 1.0, "c1")
    assert [d.envelope.headers["id"] for d in got] == [high.headers["id"], mid.headers["id"], low.headers["id"]]


def test_requeue_redelivers(broker_factory):
    b = broker_factory()
    queue = q()
    b.publish(env(), queue)
    [d] = b.fetch([queue], 1, 1.0, "c1")
    d.requeue()
    [d2] = b.fetch([queue], 1, 1.0, "c2")
    assert d2.redelivered
    assert d2.envelope.headers["id"] == d.envelope.headers["id"]


def test_requeue_with_delay(broker_factory):
    b = broker_factory()
    queue = q()
    b.publish(env(), queue)
    [d] = b.fetch([queue], 1, 1.0, "c1")
    b.requeue([d], delay=0.5)
    assert b.fetch([queue], 1, 0.1, "c1") == []
    [d2] = b.fetch([queue], 1, 2.0, "c1")
    assert d2.redelivered


def test_delayed_message_waits_in_broker(broker_factory):
    b = broker_factory()
    queue = q()
    b.publish(env(), queue, not_before=time.time() + 0.6)
    assert b.stats(queue).delayed == 1
    assert b.fetch([queue], 1, 0.1, "c1") == []
    t0 = time.monotonic()
    [d] = b.fetch([queue], 1, 3.0, "c1")
    assert 0.3 < time.monotonic() - t0 < 2.0
    d.ack()


def test_lease_expiry_redelivers(broker_factory):
    b1 = broker_factory(lease_seconds=0.5)
    b2 = broker_factory(lease_seconds=0.5)
    queue = q()
    b1.publish(env(), queue)
    [d] = b1.fetch([queue], 1, 1.0, "dead-consumer")
    assert b2.fetch([queue], 1, 0.1, "c2") == []
    time.sleep(1.2)
    [d2] = b2.fetch([queue], 1, 3.0, "c2")
    assert d2.redelivered and d2.envelope.headers["id"] == d.envelope.headers["id"]


def test_heartbeat_keeps_lease(broker_factory):
    b1 = broker_factory(lease_seconds=0.6)
    b2 = broker_factory(lease_seconds=0.6)
    queue = q()
    b1.publish(env(), queue)
    [d] = b1.fetch([queue], 1, 1.0, "alive")
    for _ in range(5):
        time.sleep(0.25)
        b1.heartbeat("alive", [d])
        assert b2.fetch([queue], 1, 0.0, "other") == []
    d.ack()


def test_started_mark_survives_redelivery(broker_factory):
    b = broker_factory(lease_seconds=0.4)
    queue = q()
    b.publish(env(), queue)
    [d] = b.fetch([queue], 1, 1.0, "c1")
    assert not d.started
    b.heartbeat("c1", [d])
    time.sleep(1.1)
    [d2] = b.fetch([queue], 1, 3.0, "c2")
    assert d2.started and d2.redelivered


def test_release_consumer(broker_factory):
    b = broker_factory()
    queue = q()
    b.publish_many([PublishItem(env(i), queue) for i in range(3)])
    got = b.fetch([queue], 3, 1.0, "gone")
    assert len(got) == 3
    assert b.release_consumer("gone") == 3
    again = b.fetch([queue], 3, 1.0, "c2")
    assert len(again) == 3 and all(d.redelivered for d in again)


def test_fetch_waits_for_publish(broker_factory):
    b = broker_factory()
    queue = q()
    producer = broker_factory()
    threading.Timer(0.3, lambda: producer.publish(env(), queue)).start()
    t0 = time.monotonic()
    got = b.fetch([queue], 1, 5.0, "c1")
    assert len(got) == 1
    assert time.monotonic() - t0 < 2.0


def test_multiple_queues(broker_factory):
    b = broker_factory()
    qa, qb = q(), q()
    b.publish(env(1), qa)
    b.publish(env(2), qb)
    got = b.fetch([qa, qb], 10, 1.0, "c1")
    assert sorted(d.queue for d in got) == sorted([qa, qb])
    assert b.fetch([qa], 10, 0.05, "c1") == []


def test_dead_letter_keeps_message_and_reason(broker_factory):
    b = broker_factory()
    queue = q()
    e = env(task="no.such.task")
    b.publish(e, queue)
    [d] = b.fetch([queue], 1, 1.0, "c1")
    d.reject("NotRegistered('no.such.task')")
    assert b.size(queue) == 0 and b.stats(queue).leased == 0
    [dl] = b.dead_letters()
    assert dl.reason == "NotRegistered('no.such.task')"
    assert dl.task_id == e.headers["id"] and dl.task_name == "no.such.task"
    assert dl.queue == queue
    assert b.replay_dead_letter(dl.id)
    [d2] = b.fetch([queue], 1, 1.0, "c1")
    assert d2.envelope.headers["id"] == e.headers["id"]


def test_purge_and_stats(broker_factory):
    b = broker_factory()
    queue = q()
    b.publish_many([PublishItem(env(i), queue) for i in range(4)])
    b.publish(env(), queue, not_before=time.time() + 60)
    s = b.stats(queue)
    assert (s.ready, s.delayed) == (4, 1)
    assert b.purge(queue) == 5
    assert b.size(queue) == 0
