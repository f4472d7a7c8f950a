"""The broadcast / reply / revoked-ids contract every broker with remote control passes."""

from __future__ import annotations

import threading
import time
import uuid


def chan() -> str:
    return f"c{uuid.uuid4().hex[:8]}.pidbox"


def test_broadcast_reaches_every_subscriber(broker_factory):
    b1 = broker_factory()
    b2 = broker_factory()
    channel = chan()
    s1 = b1.subscribe_broadcast(channel)
    s2 = b2.subscribe_broadcast(channel)
    other = b2.subscribe_broadcast(chan())
    try:
        b1.broadcast(channel, b'{"n": 1}')
        b2.broadcast(channel, b'{"n": 2}')
        got1: list[bytes] = []
        got2: list[bytes] = []
        deadline = time.monotonic() + 5
        while (len(got1) < 2 or len(got2) < 2) and time.monotonic() < deadline:
            got1 += s1.get(0.2)
            got2 += s2.get(0.2)
        assert got1 == [b'{"n": 1}', b'{"n": 2}']
        assert got2 == [b'{"n": 1}', b'{"n": 2}']
        assert other.get(0.1) == []
        late = b1.subscribe_broadcast(channel)
        try:
            assert late.get(0.1) == []  # sees only what is sent after it subscribed
        finally:
            late.close()
        assert s1.get(0.05) == []  # each message is read once per subscriber
    finally:
        for s in (s1, s2, other):
            s.close()


def test_broadcast_wakes_a_waiting_subscriber(broker_factory):
    b = broker_factory()
    channel = chan()
    sub = b.subscribe_broadcast(channel)
    try:
        t = threading.Timer(0.2, lambda: broker_factory().broadcast(channel, b"hello"))
        t.start()
        started = time.monotonic()
        got = sub.get(5.0)
        t.join()
        assert got == [b"hello"]
        assert time.monotonic() - started < 2.0
    finally:
        sub.close()


def test_broadcast_ttl_drops_stale_messages(broker_factory):
    b = broker_factory()
    channel = chan()
    sub = b.subscribe_broadcast(channel)
    try:
        b.broadcast(channel, b"stale", ttl=0.05)
        time.sleep(0.3)
        b.broadcast(channel, b"fresh", ttl=30)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += sub.get(0.2)
        assert got == [b"fresh"]
    finally:
        sub.close()


def test_replies_go_to_their_queue_only(broker_factory):
    b = broker_factory()
    worker_side = broker_factory()
    q1, q2 = f"{uuid.uuid4()}", f"{uuid.uuid4()}"
    r1 = b.subscribe_replies(q1)
    r2 = b.subscribe_replies(q2)
    try:
        worker_side.reply(q1, b'{"w1@h": {"ok": "pong"}}', ticket="t1")
        worker_side.reply(q1, b'{"w2@h": {"ok": "pong"}}', ticket="t1")
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += r1.get(0.5)
        assert sorted(got) == [b'{"w1@h": {"ok": "pong"}}', b'{"w2@h": {"ok": "pong"}}']
        assert r2.get(0.1) == []
        assert r1.get(0.05) == []  # taken once
    finally:
        r1.close()
        r2.close()


def test_revoked_ids_are_stored_and_expire(broker_factory):
    b = broker_factory()
    other = broker_factory()
    b.store_revoked(["a", "b"], 60)
    b.store_revoked(["short"], 0.05)
    b.store_revoked(["a"], 60)  # idempotent
    time.sleep(0.2)
    assert sorted(other.load_revoked()) == ["a", "b"]
