"""Events without worker processes: building, decoding, buffering, the receiver state."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.events import Clock, Event, decode, localize, routing_key_for, utcoffset
from celeriac.events.dispatcher import EventDispatcher, TaskEvents, Transport, _Flag
from celeriac.events.state import State
from celeriac.protocol.message import build_task_message, decode_task_message


@pytest.fixture
def app() -> Any:
    app = Celery("evunit", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)
    yield app
    app.close()


def test_utcoffset_is_celerys_sign() -> None:
    expected = (time.altzone if time.localtime().tm_isdst > 0 else time.timezone) / 3600
    assert utcoffset() == expected and isinstance(utcoffset(), float)


def test_event_fields_in_celerys_order() -> None:
    e = Event("task-succeeded", "w@h", 7, pid=42, offset=0.0, timestamp=1.5, uuid="u", result="5", runtime=0.1)
    assert list(e) == ["hostname", "utcoffset", "pid", "clock", "uuid", "result", "runtime", "timestamp", "type"]
    assert e["type"] == "task-succeeded" and e["clock"] == 7 and e["pid"] == 42
    assert routing_key_for("worker-heartbeat") == "worker.heartbeat"


def test_decode_object_array_and_garbage() -> None:
    one = {"type": "worker-heartbeat", "hostname": "a"}
    assert decode(json.dumps(one).encode()) == [one]
    assert decode(json.dumps([one, {"type": "task-started"}, 3, {"no": "type"}])) == [one, {"type": "task-started"}]
    assert decode(b"\xff not json") == []


def test_localize_shifts_by_the_offset_difference() -> None:
    here = utcoffset()
    e = localize({"timestamp": 1000.0, "utcoffset": here + 1.0}, received=5.0)
    assert e["timestamp"] == 1000.0 - 3600.0 and e["local_received"] == 5.0


def test_clock() -> None:
    c = Clock()
    assert [c.forward(), c.forward()] == [1, 2]
    assert c.adjust(10) == 11 and c.forward() == 12
    assert c.adjust(3) == 12


def _sub(app: Any) -> Any:
    return Transport(app).subscribe()


def _msg() -> Any:
    env = build_task_message("proj.add", str(uuid.uuid4()), (2, 3), {"z": 1})
    return decode_task_message(env, frozenset({"application/json"}))


def test_task_events_are_buffered_and_sent_as_one_array(app: Any) -> None:
    sub = _sub(app)
    ev = TaskEvents(app, "w@h", _Flag(True))
    msg = _msg()
    ev.received(msg)
    ev.started(msg.id)
    ctx = SimpleNamespace(state=states.SUCCESS, req=SimpleNamespace(id=msg.id), retval=5, runtime=0.25,
                          exc=None, tb=None, retry=None, reject_requeue=None)
    ev.finished(ctx)  # type: ignore[arg-type]
    raws = sub.get(5.0)
    assert len(raws) == 1  # one publish for the three
    events = json.loads(raws[0])
    assert [e["type"] for e in events] == ["task-received", "task-started", "task-succeeded"]
    received, started, succeeded = events
    assert received["args"] == "(2, 3)" and received["kwargs"] == "{'z': 1}" and received["name"] == "proj.add"
    assert received["root_id"] == msg.id and received["parent_id"] is None and received["retries"] == 0
    assert started["uuid"] == msg.id and succeeded["result"] == "5" and succeeded["runtime"] == 0.25
    assert [e["clock"] for e in events] == [1, 2, 3]
    ev.close()
    sub.close()


def test_task_events_off_send_nothing(app: Any) -> None:
    sub = _sub(app)
    flag = _Flag(False)
    ev = TaskEvents(app, "w@h", flag)
    msg = _msg()
    ev.received(msg)
    ev.failed(msg.id, "ValueError()")
    ev.flush()
    assert sub.get(0.3) == [] and ev._thread is None  # no thread either
    flag.value = 1
    ev.revoked(msg.id, expired=True)
    got = json.loads(sub.get(5.0)[0])
    assert got[0]["type"] == "task-revoked" and got[0]["expired"] is True and got[0]["terminated"] is False
    ev.close()
    sub.close()


def test_dispatcher_sends_at_once_or_buffers(app: Any) -> None:
    sub = _sub(app)
    d = EventDispatcher(app, hostname="me@h", buffer_group=["task"])
    d.send("worker-custom", foo=1)
    d.send("task-started", uuid="a")
    d.send("task-succeeded", uuid="a", result="1", runtime=0.0)
    first = sub.get(5.0)
    assert [json.loads(r)["type"] for r in first] == ["worker-custom"]
    d.flush()
    batch = json.loads(sub.get(5.0)[0])
    assert [e["type"] for e in batch] == ["task-started", "task-succeeded"]
    d.disable()
    assert d.send("worker-custom") is None
    sub.close()


def test_receiver_routing_key_filter(app: Any) -> None:
    got: list[str] = []
    r = app.events.Receiver(handlers={"*": lambda e: got.append(e["type"])}, routing_key="worker.#")
    events = r.events_from_message(json.dumps([{"type": "task-started", "uuid": "x"},
                                               {"type": "worker-heartbeat", "clock": 9}]).encode())
    assert [e["type"] for e in events] == ["worker-heartbeat"] and r.clock.value == 10


def test_receiver_capture_limit_and_timeout(app: Any) -> None:
    got: list[dict[str, Any]] = []
    r = app.events.Receiver(handlers={"task-started": got.append})
    r.subscribe()
    d = EventDispatcher(app, hostname="me@h")
    d.send("task-started", uuid="1")
    d.send("task-started", uuid="2")
    r.capture(limit=2, wakeup=False)
    assert [e["uuid"] for e in got] == ["1", "2"] and "local_received" in got[0]
    with pytest.raises(TimeoutError):
        r.capture(timeout=0.3, wakeup=False)


def _ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "hostname": "w@h", "timestamp": time.time(), "local_received": time.time(),
            "utcoffset": 0, "pid": 1, "clock": 1, **fields}


def test_state_task_precedence_and_workers() -> None:
    s = State()
    s.event(_ev("task-succeeded", uuid="t", result="5", runtime=0.1))
    s.event(_ev("task-received", uuid="t", name="proj.add", args="(2, 3)"))  # late: fills gaps only
    t = s.tasks["t"]
    assert t.state == states.SUCCESS and t.name == "proj.add" and t.result == "5" and t.received
    s.event(_ev("task-retried", uuid="r", exception="KeyError()"))
    s.event(_ev("task-received", uuid="r", retries=1))  # after a retry: received again
    assert s.tasks["r"].state == states.RECEIVED
    s.event(_ev("task-started", uuid="x"))
    s.event(_ev("task-rejected", uuid="x", requeue=False))
    assert s.tasks["x"].state == states.REJECTED
    s.event(_ev("worker-heartbeat", freq=2.0, active=0, processed=3))
    w = s.workers["w@h"]
    assert w.alive and w.processed == 3 and s.alive_workers() == [w] and t.worker is w
    w.heartbeats = [time.time() - 5]  # older than 2 x freq
    assert not w.alive and w.status_string == "OFFLINE"
    s.event(_ev("worker-heartbeat", freq=2.0))
    s.event(_ev("worker-offline"))
    assert not w.alive
    assert s.counts_by_state() == {"SUCCESS": 1, "RECEIVED": 1, "REJECTED": 1}
    assert [u for u, _ in s.tasks_by_type("proj.add")] == ["t"]


def test_state_forgets_the_oldest_tasks() -> None:
    s = State(max_tasks_in_memory=3)
    for i in range(5):
        s.event(_ev("task-started", uuid=str(i)))
    assert list(s.tasks) == ["2", "3", "4"] and s.task_count == 5
    assert [u for u, _ in s.itertasks(limit=2)] == ["4", "3"]
