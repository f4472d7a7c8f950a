"""Signatures and workflows without a worker: the dict form, partials, links, operators,
freezing, and the messages a chain, chord and group put on the (memory) broker, compared
with the shapes Celery 5.7 sends (celery-wire 1.4, 1.5, 3.7).  Eager mode runs them here."""

from __future__ import annotations

import copy
import json
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import celeriac
from celeriac import Celery, chain, chord, chunks, group, maybe_signature, signature, xmap, xstarmap
from celeriac.canvas import Signature
from celeriac.exceptions import ChordError
from celeriac.protocol.message import decode_task_message
from celeriac.result import EagerResult, GroupResult

SIG_KEYS = ["task", "args", "kwargs", "options", "subtask_type", "immutable"]


@pytest.fixture
def app() -> Iterator[Celery]:
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery("wire", broker=url, backend=url, set_as_current=False)

    @app.task(name="wiretasks.add")
    def add(x, y=0):
        return x + y

    @app.task(name="wiretasks.tsum")
    def tsum(xs):
        return sum(xs)

    @app.task(name="wiretasks.boom")
    def boom(*args):
        raise ValueError("boom")

    yield app
    app.close()


def t(app: Celery, name: str) -> Any:
    return app.tasks[f"wiretasks.{name}"]


def sent(app: Celery) -> list[Any]:
    """Every task message waiting on the default queue, decoded, in publish order."""
    deliveries = app.broker.fetch(["celery"], 10000, 0.05, "test-consumer")
    return [decode_task_message(d.envelope) for d in deliveries]


def js(value: Any) -> Any:
    return json.loads(json.dumps(value))


# -- the dict form ----------------------------------------------------------------------

def test_signature_is_celerys_six_key_dict(app: Celery) -> None:
    add = t(app, "add")
    s = add.s(2, 2)
    assert isinstance(s, dict) and list(s) == SIG_KEYS
    assert js(s) == {"task": "wiretasks.add", "args": [2, 2], "kwargs": {}, "options": {},
                     "subtask_type": None, "immutable": False}
    assert js(add.si(1)) == {"task": "wiretasks.add", "args": [1], "kwargs": {}, "options": {},
                             "subtask_type": None, "immutable": True}
    assert s.task == s.name == "wiretasks.add" and s.args == (2, 2) and s.type is add
    s2 = signature("wiretasks.add", (1,), {"y": 2}, countdown=5, app=app)
    assert js(s2)["options"] == {"countdown": 5} and s2.kwargs == {"y": 2}
    assert add.signature((1, 2), queue="q").options == {"queue": "q"}
    assert repr(add.s(1, y=2)) == "wiretasks.add(1, y=2)" and repr(add.si(1)) == "%wiretasks.add(1)"


def test_partials_clone_set_replace(app: Celery) -> None:
    add = t(app, "add")
    s = add.s(1, y=2)
    assert s._merge((0,), {"y": 3, "z": 4}) == ((0, 1), {"y": 3, "z": 4}, {})
    frozen = add.si(1)
    assert frozen._merge((0,), {"y": 3})[:2] == ((1,), {})        # immutable: nothing added
    assert frozen.clone((0,)).args == (0, 1)                        # clone always merges
    c = s.clone(args=(5,), kwargs={"z": 1}, queue="q")
    assert (c.args, c.kwargs, c.options) == ((5, 1), {"y": 2, "z": 1}, {"queue": "q"})
    assert (s.args, s.kwargs, s.options) == ((1,), {"y": 2}, {})
    assert s.set(queue="x", immutable=True) is s and s.immutable and s.options == {"queue": "x"}
    r = s.replace(args=(9,), options={})
    assert r.args == (9,) and r.options == {} and s.args == (1,)
    link = add.s()
    s.link(link)
    c = s.clone()
    c.link(add.s(7))
    assert len(s.options["link"]) == 1 and len(c.options["link"]) == 2


def test_links_freeze_and_ids(app: Celery) -> None:
    add, boom = t(app, "add"), t(app, "boom")
    s = add.s(1, 1)
    cb, eb = add.s(1), boom.si()
    assert s.link(cb) is cb and s.link_error(eb) is eb and s.on_error(eb) is s
    assert s.options["link"] == [cb] and s.options["link_error"] == [eb, eb]
    assert [x.args for x in s.flatten_links()] == [(1, 1), (1,)]
    res = s.freeze()
    assert res.id == s.id == s.options["task_id"] and s.options["reply_to"] == app.oid
    assert s.freeze("other").id == res.id                           # an assigned id is kept
    assert add.s().freeze("mine").id == "mine"
    g = group(add.s(1), add.s(2))
    g.link(cb)
    assert all(m.options["link"] == [cb] for m in g.tasks)
    ch = chord([add.s(1)], add.s())
    ch.link_error(eb)
    assert ch.body.options["link_error"] == [eb]


def test_operators(app: Celery) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    c = add.s(1, 1) | add.s(2)
    assert isinstance(c, chain) and [s.args for s in c.tasks] == [(1, 1), (2,)]
    c2 = c | add.s(3) | (add.s(4) | add.s(5))
    assert isinstance(c2, chain) and [s.args for s in c2.tasks] == [(1, 1), (2,), (3,), (4,), (5,)]
    g = group(add.s(1, 1), add.s(2, 2))
    ch = g | tsum.s()
    assert isinstance(ch, chord) and ch.body.task == "wiretasks.tsum" and len(ch.tasks) == 2
    assert isinstance(add.s(1, 1) | g, chain)
    assert isinstance(add.s(1, 1) | group(add.s(1)), chain)           # a group of one unrolls
    assert (add.s(1, 1) | group(add.s(1))).tasks[1].task == "wiretasks.add"
    assert chain(add.s(1) for _ in range(3)).tasks[2].args == (1,)    # a generator of steps
    assert len(group([add.s(i) for i in range(4)])) == 4


def test_maybe_signature_from_the_wire_and_pickle(app: Celery) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    assert maybe_signature(None) is None
    d = js(chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(5)))
    sig = maybe_signature(d, app=app)
    assert isinstance(sig, chain) and isinstance(sig.tasks[1], chord)
    assert isinstance(sig.tasks[1].header, group) and sig.tasks[1].body.task == "wiretasks.tsum"
    assert js(sig) == d
    assert [type(x) for x in maybe_signature([d, js(add.s())], app=app)] == [chain, Signature]
    for obj in (add.s(1, y=2), chain(add.s(1), add.s(2)), group(add.s(1)), chord([add.s(1)], tsum.s()),
                add.chunks([(1, 1)], 1), add.map([1])):
        again = pickle.loads(pickle.dumps(obj))
        assert type(again) is type(obj) and js(again) == js(obj)
        deep = copy.deepcopy(obj)
        assert deep == obj and deep is not obj
    assert signature(d, app=app).tasks[0].args == (1, 1)


def test_chunks_map_starmap_shapes(app: Celery) -> None:
    add = t(app, "add")
    assert js(add.chunks([(1, 1)], 1)) == {
        "task": "celery.chunks", "args": [], "immutable": True, "options": {}, "subtask_type": None,
        "kwargs": {"task": js(add.s()), "it": [[1, 1]], "n": 1}}
    assert js(add.map([1, 2])) == {"task": "celery.map", "args": [], "kwargs": {"task": js(add.s()), "it": [1, 2]},
                                   "options": {}, "subtask_type": None, "immutable": True}
    assert isinstance(add.starmap([(1, 2)]), xstarmap) and isinstance(add.map([]), xmap)
    g = add.chunks([(i, i) for i in range(5)], 2).group()
    assert isinstance(g, group) and [m.kwargs["it"] for m in g.tasks] == [[(0, 0), (1, 1)], [(2, 2), (3, 3)], [(4, 4)]]
    assert all(m.task == "celery.starmap" for m in g.tasks)
    assert isinstance(maybe_signature(js(add.chunks([(1, 1)], 1)), app=app), chunks)
    with pytest.raises(ValueError):
        add.chunks([(1, 1)], 0).group()
    assert {"celery.map", "celery.starmap", "celery.chunks", "celery.accumulate"} <= set(app.tasks)


# -- messages on the wire (celery-wire 1.4 / 1.5, captured from Celery 5.7) -----------------

def test_chain_message(app: Celery) -> None:
    add = t(app, "add")
    res = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    (msg,) = sent(app)
    assert msg.args == [1, 2] and set(msg.embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert msg.embed["callbacks"] is None and msg.embed["chord"] is None
    steps = msg.embed["chain"]
    assert [s["args"] for s in steps] == [[4], [3]]                   # last step first
    for s in steps:
        assert list(s) == SIG_KEYS and set(s["options"]) == {"task_id", "reply_to"}
        assert s["options"]["reply_to"] == app.oid and s["subtask_type"] is None
    assert [s["options"]["task_id"] for s in steps] == [res.id, res.parent.id]
    assert msg.id == res.parent.parent.id and msg.root_id == msg.id and msg.parent_id is None
    # apply_async(task_id=..., link_error=...): the last step's id; link_error on every step
    boom = t(app, "boom")
    res = chain(add.s(1, 1), add.s(2)).apply_async(task_id="fixed", link_error=boom.s())
    (msg,) = sent(app)
    assert msg.embed["errbacks"] == [js(boom.s())]
    (step,) = msg.embed["chain"]
    assert step["options"]["task_id"] == "fixed" == res.id and step["options"]["link_error"] == [js(boom.s())]


def test_chord_messages_and_size(app: Celery) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    res = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    msgs = sent(app)
    gid = res.parent.id
    assert isinstance(res.parent, GroupResult) and [r.id for r in res.parent] == [m.id for m in msgs]
    body = {"task": "wiretasks.tsum", "args": [], "kwargs": {},
            "options": {"task_id": res.id, "reply_to": app.oid, "group_id": gid},
            "subtask_type": None, "immutable": False}
    for i, msg in enumerate(msgs):
        assert (msg.group, msg.group_index, msg.root_id) == (gid, i, msg.id)
        assert msg.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": body}
    # the size was recorded before the header was sent: the second part completes the chord
    backend = app.backend
    assert backend.chord_join(gid, msgs[0].id, 0, "SUCCESS", 2) is None
    assert backend.chord_join(gid, msgs[0].id, 0, "SUCCESS", 2) is None          # a duplicate
    ready = backend.chord_join(gid, msgs[1].id, 1, "SUCCESS", 4)
    assert ready is not None and ready.results == [2, 4]
    # chord(...).apply_async(task_id=X) names the body's result, as in Celery
    res = chord([add.s(1, 1)], tsum.s()).apply_async(task_id="X")
    (msg,) = sent(app)
    assert res.id == "X" == msg.embed["chord"]["options"]["task_id"] and msg.group != "X"


def test_link_embed_and_chord_in_chain_shape(app: Celery) -> None:
    add, tsum, boom = t(app, "add"), t(app, "tsum"), t(app, "boom")
    add.apply_async((1, 2), link=tsum.s(), link_error=boom.si("errback"))
    (msg,) = sent(app)
    assert msg.embed == {"callbacks": [js(tsum.s())], "errbacks": [js(boom.si("errback"))], "chain": None,
                         "chord": None}
    chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(5)).apply_async()
    (msg,) = sent(app)
    last, ch = msg.embed["chain"]
    assert last["args"] == [5] and ch["task"] == "celery.chord" and ch["subtask_type"] == "chord"
    assert set(ch["kwargs"]) == {"kwargs", "header", "body"}
    header = ch["kwargs"]["header"]
    assert header["task"] == "celery.group" and header["subtask_type"] == "group"
    assert header["options"]["task_id"] == ch["options"]["task_id"]
    assert [set(m["options"]) for m in header["kwargs"]["tasks"]] == [{"task_id", "reply_to", "group_index"}] * 2
    assert set(ch["kwargs"]["body"]["options"]) == {"task_id", "reply_to"}
    # a group of chains: the chain's last step carries the group
    res = group(chain(add.s(1, 1), add.s(2)), add.s(3, 3)).apply_async()
    first, other = sent(app)
    assert first.group is None and other.group == res.id and other.group_index == 1
    (step,) = first.embed["chain"]
    assert (step["options"]["group_id"], step["options"]["group_index"]) == (res.id, 0)
    assert res.results[0].parent.id == first.id


def test_group_is_one_round_trip(app: Celery) -> None:
    calls = []
    original = app.broker.publish_many

    def counting(items: Any) -> None:
        calls.append(len(items))
        original(items)

    app.broker.publish_many = counting  # type: ignore[method-assign]
    add = t(app, "add")
    res = group(add.s(i, i) for i in range(500)).apply_async()
    chord([add.s(i, i) for i in range(300)], t(app, "tsum").s()).apply_async()
    assert calls == [500, 300]
    msgs = sent(app)[:500]
    assert [m.group_index for m in msgs] == list(range(500)) and {m.group for m in msgs} == {res.id}


# -- eager mode -------------------------------------------------------------------------------

def test_eager_workflows(app: Celery) -> None:
    app.conf.task_always_eager = True
    add, tsum, boom = t(app, "add"), t(app, "tsum"), t(app, "boom")
    res = chain(add.s(4, 6) | add.s(3))()
    assert isinstance(res, EagerResult) and res.get() == 13 and res.parent.get() == 10
    assert group(add.s(i, i) for i in range(4))().get() == [0, 2, 4, 6]
    assert chord(group(add.s(i, i) for i in range(4)))(tsum.s()).get() == 12
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2)().get() == [[2, 4], [6]]
    assert add.map([1, 2]).apply_async().get() == [1, 2]
    assert add.starmap([(1, 2)]).delay().get() == [3]
    assert (add.s(1, 1) | group(add.s(1), add.s(2)))().get() == [3, 4]
    assert sent(app) == []
    seen: list[Any] = []

    @app.task(name="wiretasks.errback")
    def errback(request, exc, traceback):
        seen.append((request.id, type(exc).__name__))

    s = boom.s()
    s.link_error(errback.s())
    res = s.apply_async(task_id="eager-boom")
    assert res.state == "FAILURE" and seen == [("eager-boom", "ValueError")]
    with pytest.raises(ValueError):
        chord([boom.s()], tsum.s())().get()


def test_top_level_names_are_the_canvas_module() -> None:
    from celeriac import canvas
    for name in celeriac._CANVAS:
        assert getattr(celeriac, name) is getattr(canvas, name)
    assert issubclass(ChordError, Exception)


def test_arguments_are_checked_before_anything_is_sent(app: Celery) -> None:
    add = t(app, "add")
    with pytest.raises(TypeError, match="wiretasks.add"):
        group(add.s(1, 1), add.s(1, 2, 3)).apply_async()
    with pytest.raises(TypeError):
        chord([add.s()], t(app, "tsum").s()).apply_async()
    assert sent(app) == []
