"""Canvas with real workers on the embedded broker and on Redis: seed 003's workflows,
links and errbacks, immutable and partial signatures, pre-assigned ids, chunks/map/starmap,
GroupResult save/restore, parents, children and collect()."""

from __future__ import annotations

import pytest
from canvas_support import CanvasEnv, canvas_fixture, make_env, wait_for  # noqa: F401  (the `canvas` fixture)

from celeriac import chain, chord, group, signature
from celeriac.result import AsyncResult, GroupResult

pytestmark = pytest.mark.timeout(300)
T = 60


def test_seed_003_chain_group_chord(canvas: CanvasEnv) -> None:
    """seed 003: chain(add.s(4, 6) | multiply.s(3)), group(add.s(i, i)), chord(group)(callback)."""
    m = canvas.m
    with canvas.worker():
        assert chain(m.add.s(4, 6) | m.multiply.s(3))().get(timeout=T) == 30
        assert group(m.add.s(i, i) for i in range(10))().get(timeout=T) == [2 * i for i in range(10)]
        assert chord(group(m.add.s(i, i) for i in range(10)))(m.tsum.s()).get(timeout=T) == 90
        # the same through celeriac's top-level names and the | operator
        assert (m.add.s(1, 1) | m.add.s(2) | m.add.s(3)).delay().get(timeout=T) == 7
        assert (group(m.add.s(i, i) for i in range(4)) | m.tsum.s())().get(timeout=T) == 12
        assert chord([m.add.s(1, 2), m.add.s(3, 4)], m.collect_list.s()).apply_async().get(timeout=T) == [3, 7]


def test_chain_results_parents_and_ids(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = chain(m.add.s(1, 1), m.add.s(2), m.whoami.s()).apply_async()
        ids = res.get(timeout=T)
        second, first = res.parent, res.parent.parent
        assert first.parent is None
        assert second.get(timeout=T) == 4 and first.get(timeout=T) == 2
        # the last step was sent by the second, which was sent by the first: one root
        assert ids == [res.id, second.id, first.id, None]
        # each step's result records the next one as its child
        assert [c.id for c in first.children] == [second.id]
        assert [c.id for c in second.children] == [res.id]
        collected = list(first.collect())
        assert [(r.id, v) for r, v in collected] == [(first.id, 2), (second.id, 4), (res.id, ids)]


def test_link_and_link_error(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        # callbacks get the return value prepended; several run, each once
        res = m.add.apply_async((2, 3), link=[m.record.s(), m.multiply.s(10)])
        assert res.get(timeout=T) == 5
        wait_for(lambda: canvas.notes("record"), T, message="the callback")
        assert canvas.notes("record") == [["5", "None"]]
        child_ids = [c.id for c in wait_for(lambda: res.children, T, message="children in the meta")]
        assert len(child_ids) == 2
        assert sorted(AsyncResult(i, app=m.app).get(timeout=T) for i in child_ids) == [5, 50]
        # link on a signature, immutable callback: no value prepended
        sig = m.add.s(1, 1)
        sig.link(m.record.si("fixed"))
        sig.delay().get(timeout=T)
        wait_for(lambda: len(canvas.notes("record")) == 2, T, message="the immutable callback")
        assert canvas.notes("record")[1] == ["fixed", "None"]
        # errbacks: (request, exc, traceback) inline in the worker; one-argument ones as tasks
        failing = m.boom.s(7)
        failing.link_error(m.on_error.s())
        failing.link_error(m.on_error_id.s())
        failing.link(m.record.s("never"))
        bad = failing.apply_async()
        with pytest.raises(ValueError, match="boom: 7"):
            bad.get(timeout=T)
        wait_for(lambda: canvas.notes("on_error") and canvas.notes("on_error_id"), T, message="errbacks")
        assert canvas.notes("on_error") == [[bad.id, "ValueError", "boom:_7", "True"]]
        assert canvas.notes("on_error_id") == [[bad.id]]
        assert len(canvas.notes("record")) == 2  # the success callback did not run


def test_immutable_and_partial_signatures(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        # si() ignores the previous result
        assert chain(m.add.s(1, 1), m.add.si(10, 10), m.add.s(1))().get(timeout=T) == 21
        # partial application: args prepended, kwargs merged, options merged
        partial = m.add.s(y=5)
        assert partial.delay(3).get(timeout=T) == 8
        assert m.add.s(2).apply_async((40,)).get(timeout=T) == 42
        assert signature("ctasks.add", args=(1,), app=m.app).delay(2).get(timeout=T) == 3
        assert m.add.signature((2, 2), countdown=0.1).apply_async().get(timeout=T) == 4
        # clone leaves the original alone
        base = m.add.s(1)
        assert base.clone(args=(5,)).delay().get(timeout=T) == 6
        assert base.args == (1,)
        # a chain called with args gives them to its first step
        assert chain(m.add.s(1), m.multiply.s(2))(4).get(timeout=T) == 10
        # a group called with partial args prepends them to every member
        assert group(m.add.s(1), m.add.s(2))(10).get(timeout=T) == [11, 12]


def test_freeze_and_preassigned_ids(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        sig = m.add.s(2, 2)
        frozen = sig.freeze()
        assert sig.id == frozen.id
        res = sig.apply_async()
        assert res.id == frozen.id and res.get(timeout=T) == 4
        # apply_async(task_id=) on a chain names the last step
        res = chain(m.add.s(1, 1), m.add.s(1)).apply_async(task_id="chain-end-" + canvas.kind)
        assert res.id == "chain-end-" + canvas.kind and res.get(timeout=T) == 3
        # a frozen chain keeps its ids when sent
        c = chain(m.add.s(1, 1), m.multiply.s(5))
        pre = c.freeze()
        res = c.apply_async()
        assert (res.id, res.parent.id) == (pre.id, pre.parent.id)
        assert AsyncResult(pre.id, app=m.app).get(timeout=T) == 10
        # a frozen group: its GroupResult before anything is sent
        g = group(m.add.s(i, i) for i in range(3))
        pre_g = g.freeze()
        res_g = g.apply_async()
        assert res_g.id == pre_g.id and [r.id for r in res_g] == [r.id for r in pre_g]
        assert pre_g.get(timeout=T) == [0, 2, 4]
        # a chord: the body's id is chosen by task_id, the header's by the group
        res = chord([m.add.s(1, 1)], m.tsum.s()).apply_async(task_id="chord-body-" + canvas.kind)
        assert res.id == "chord-body-" + canvas.kind and res.get(timeout=T) == 2
        assert isinstance(res.parent, GroupResult) and res.parent.get(timeout=T) == [2]


def test_chunks_map_starmap(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = m.add.chunks([(i, i) for i in range(10)], 3).apply_async()
        assert isinstance(res, GroupResult) and len(res) == 4
        assert res.get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
        assert m.add.chunks(zip(range(5), range(5), strict=True), 2)().get(timeout=T) == [[0, 2], [4, 6], [8]]
        assert m.identity.map([1, "a", None]).delay().get(timeout=T) == [1, "a", None]
        assert m.add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=T) == [3, 7]
        # the chunks' group can be driven like any group
        assert m.add.chunks([(1, 1)] * 4, 2).group().apply_async().get(timeout=T) == [[2, 2], [2, 2]]


def test_group_result_api_save_restore(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = group([m.add.s(1, 1), m.boom.s("x"), m.add.s(2, 2)]).apply_async()
        wait_for(res.ready, T, message="group done")
        assert res.completed_count() == 2
        assert res.failed() and not res.successful()
        assert res.join(timeout=T, propagate=False)[0::2] == [2, 4]
        with pytest.raises(ValueError, match="boom: x"):
            res.get(timeout=T)
        res.save()
        restored = GroupResult.restore(res.id, app=m.app)
        assert restored is not None
        assert restored.id == res.id and [r.id for r in restored] == [r.id for r in res]
        assert restored.completed_count() == 2
        ok = group(m.add.s(i, 0) for i in range(5))()
        assert ok.get(timeout=T) == list(range(5))
        assert ok.ready() and ok.successful() and ok.completed_count() == 5
        ok.save()
        assert m.app.GroupResult.restore(ok.id).join(timeout=T) == list(range(5))
        ok.delete()
        assert GroupResult.restore(ok.id, app=m.app) is None


def test_group_sent_from_a_task_is_a_child(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = m.spawn.delay(3)
        gid = res.get(timeout=T)
        (child,) = res.children
        assert isinstance(child, GroupResult) and child.id == gid
        assert child.get(timeout=T) == [1, 2, 3]
        values = [v for _, v in res.collect()]
        assert values[0] == gid and values[1] == [1, 2, 3]


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_workflows_on_every_pool(pool: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canvas middleware runs in every pool (the asyncio pool runs it as a phase)."""
    for env in make_env("sqlite", tmp_path, monkeypatch):
        m = env.m
        with env.worker("-P", pool, "-c", "4"):
            assert chain(m.add.s(4, 6) | m.multiply.s(3))().get(timeout=T) == 30
            assert chord(group(m.add.s(i, i) for i in range(10)))(m.tsum.s()).get(timeout=T) == 90
            failing = m.boom.s(1)
            failing.link_error(m.on_error.s())
            with pytest.raises(ValueError):
                failing.delay().get(timeout=T)
            wait_for(lambda e=env: e.notes("on_error"), T, message="the errback")
