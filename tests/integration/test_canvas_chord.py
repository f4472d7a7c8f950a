"""Chord reliability with real workers, on the embedded broker and on Redis: a failing header
(ChordError, errbacks, no body), a header message delivered twice, a worker killed mid-chord,
a revoked header task, and 1,000 header results arriving in header order."""

from __future__ import annotations

import time

import pytest
from canvas_support import REDIS_URL, CanvasEnv, canvas_fixture, wait_for  # noqa: F401  (the `canvas` fixture)

from celeriac import chord, group
from celeriac._canvas_send import Batch
from celeriac.exceptions import ChordError

pytestmark = pytest.mark.timeout(400)
T = 90


def _chord_keys(canvas: CanvasEnv) -> dict[str, bytes | None]:
    """The Redis chord keys of every chord under this test's prefix (suffix -> value)."""
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    try:
        out = {}
        for key in client.scan_iter(match=f"{canvas.prefix}celery-taskset-meta-*", count=1000):
            suffix = key.decode().rsplit(".", 1)[-1]
            out[suffix] = client.get(key) if client.type(key) == b"string" else b"<" + client.type(key) + b">"
        return out
    finally:
        client.close()


def test_header_failure_chord_error_errbacks_no_body(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        c = chord([m.add.s(1, 1), m.boom.s(1), m.add.s(2, 2)], m.tsum.s())
        c.link_error(m.on_error.s())
        c.link_error(m.on_error_id.s())
        res = c.apply_async()
        failing = res.parent.results[1]
        with pytest.raises(ChordError) as info:
            res.get(timeout=T)
        assert str(info.value) == f"Dependency {failing.id} raised ValueError('boom: 1')"
        assert res.state == "FAILURE"
        meta = m.app.backend.get_task_meta(res.id)
        assert meta["result"]["exc_type"] == "ChordError" and meta["result"]["exc_module"] == "celery.exceptions"
        wait_for(lambda: canvas.notes("on_error") and canvas.notes("on_error_id"), T, message="errbacks")
        assert canvas.notes("on_error") == [[res.id, "ChordError", "Dependency_" + failing.id
                                             + "_raised_ValueError('boom:_1')", "False"]]
        assert canvas.notes("on_error_id") == [[res.id]]
        assert res.parent.join(timeout=T, propagate=False)[0::2] == [2, 4]
        time.sleep(0.5)
        assert not canvas.notes("tsum")  # the body never ran
        if canvas.kind == "redis":  # celery-wire 3.7: parts dropped, claim marked done
            wait_for(lambda: _chord_keys(canvas) == {"c": b"done"}, 10, message="chord keys cleaned up")
        # a chord inside a chain: its body and the steps after it fail, the errback runs once
        res = (m.add.s(1, 1) | chord([m.add.s(1), m.boom.s()], m.tsum.s()) | m.add.s(1)).apply_async()
        with pytest.raises(ChordError, match="raised ValueError"):
            res.get(timeout=T)
        assert res.parent.state == "FAILURE"


def test_duplicate_header_delivery_runs_the_body_once(canvas: CanvasEnv) -> None:
    m = canvas.m
    c = chord([m.record.s(i) for i in range(6)], m.collect_list.s())
    batch = Batch(m.app)
    res = c._prepare(None, None, {}, batch)
    header_messages = list(batch.items)
    batch.flush()                                   # chord size, then the header
    m.app.broker.publish_many(header_messages)      # ... and every header message once more
    with canvas.worker():
        assert res.get(timeout=T) == list(range(6))
        wait_for(lambda: len(canvas.notes("record")) == 12, T, message="every delivery ran")
        # a late duplicate of one header task, after the chord finished
        m.app.broker.publish_many(header_messages[:1])
        wait_for(lambda: len(canvas.notes("record")) == 13, T, message="the late duplicate ran")
        time.sleep(1.0)
    assert canvas.notes("collect_list") == [["6"]]   # the body ran once


def test_worker_killed_mid_chord(canvas: CanvasEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    m = canvas.m
    n = 16
    res = chord([m.slow_add.s(i, 0, 0.3) for i in range(n)], m.collect_list.s()).apply_async()
    first = canvas.worker("-c", "2", CANVAS_LEASE="3")
    try:
        wait_for(lambda: len(canvas.notes("slow_add_start")) >= 4, T, message="header tasks started")
    finally:
        first.kill_all()
        first.stop()
    with canvas.worker("-c", "2", CANVAS_LEASE="3"):
        assert res.get(timeout=T) == list(range(n))
        time.sleep(1.0)
    assert canvas.notes("collect_list") == [[str(n)]]
    started = [int(x[0]) for x in canvas.notes("slow_add_start")]
    assert set(started) == set(range(n))


def test_worker_killed_mid_chord_with_early_acks_fails_the_chord(canvas: CanvasEnv) -> None:
    """Ack on start (the default): a header task that was running when its worker died does
    not run again; it counts as WorkerLostError and the chord fails instead of waiting."""
    m = canvas.m
    res = chord([m.slow_early.s(i, 6) for i in range(2)] + [m.add.s(1, 1)], m.collect_list.s()).apply_async()
    first = canvas.worker("-c", "2", CANVAS_LEASE="3")
    try:
        wait_for(lambda: len(canvas.notes("slow_early_start")) == 2, T, message="both slow tasks started")
        time.sleep(3.0)  # heartbeats (every second) have recorded them as started
    finally:
        first.kill_all()
        first.stop()
    with canvas.worker("-c", "2", CANVAS_LEASE="3"):
        with pytest.raises(ChordError, match="raised WorkerLostError"):
            res.get(timeout=T)
    assert not canvas.notes("collect_list")
    assert len(canvas.notes("slow_early_start")) == 2


def test_revoked_header_task_fails_the_chord(canvas: CanvasEnv) -> None:
    m = canvas.m
    res = chord([m.add.s(1, 1), m.add.s(2, 2)], m.tsum.s()).apply_async()
    revoked = res.parent.results[1]
    m.app.control.revoke(revoked.id)
    with canvas.worker():
        with pytest.raises(ChordError, match=f"Dependency {revoked.id} raised TaskRevokedError"):
            res.get(timeout=T)
    assert not canvas.notes("tsum")


@pytest.mark.slow
def test_thousand_member_chord_in_header_order(canvas: CanvasEnv) -> None:
    m = canvas.m
    n = 1000
    with canvas.worker("-c", "2"):
        res = chord((m.identity.s(i) for i in range(n)), m.collect_list.s())()
        assert res.get(timeout=240) == list(range(n))
        # and a group of the same size, results in order
        assert group(m.identity.s(i) for i in range(n))().get(timeout=240) == list(range(n))
    assert canvas.notes("collect_list") == [[str(n)]]
