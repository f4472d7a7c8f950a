"""Nested canvases, Task.replace and failures inside chains, with real workers on the
embedded broker and on Redis."""

from __future__ import annotations

import pytest
from canvas_support import CanvasEnv, canvas_fixture, wait_for  # noqa: F401  (the `canvas` fixture)

from celeriac import chain, chord, group
from celeriac.result import AsyncResult, GroupResult

pytestmark = pytest.mark.timeout(300)
T = 60


def test_chain_of_groups_and_group_followed_by_a_task(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        # a group at the end of a chain gets the previous result prepended to each member
        res = chain(m.add.s(1, 1), group(m.add.s(1), m.add.s(2)))()
        assert isinstance(res, GroupResult) and res.get(timeout=T) == [3, 4]
        assert res.parent.get(timeout=T) == 2
        # a group followed by a task becomes a chord: the task gets the list, once
        res = chain(m.add.s(1, 1), group(m.add.s(1), m.add.s(2)), m.tsum.s())()
        assert res.get(timeout=T) == 7
        assert isinstance(res.parent, GroupResult) and res.parent.get(timeout=T) == [3, 4]
        assert (group(m.add.s(i, i) for i in range(3)) | m.tsum.s() | m.multiply.s(2))().get(timeout=T) == 12
        # group -> group: the second group's members each get the first group's list
        res = chain(group(m.add.s(1, 1), m.add.s(2, 2)), group(m.collect_list.s(), m.collect_list.s(9)))()
        assert res.get(timeout=T) == [[2, 4], [2, 4, 9]]
        assert [n[0] for n in canvas.notes("tsum")] == ["7", "6"]  # each chord body ran once


def test_group_of_chains_and_nested_groups(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = group(chain(m.add.s(1, 1), m.multiply.s(10)), chain(m.add.s(2, 2), m.multiply.s(10)),
                    m.add.s(5, 5))()
        assert res.get(timeout=T) == [20, 40, 10]
        assert [r.parent.get(timeout=T) for r in res.results[:2]] == [2, 4]
        assert res.completed_count() == 3
        res = group(group(m.add.s(1, 1), m.add.s(2, 2)), m.add.s(3, 3))()
        assert res.get(timeout=T) == [[2, 4], 6]
        assert res.ready() and res.successful()


def test_chord_inside_a_chain_and_chord_of_chains(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = chain(m.add.s(1, 1), chord([m.add.s(1), m.add.s(2)], m.tsum.s()), m.multiply.s(10))()
        assert res.get(timeout=T) == 70
        assert res.parent.get(timeout=T) == 7
        assert chain(chord([m.add.s(1, 1), m.add.s(2, 2)], m.tsum.s()), m.add.s(1))().get(timeout=T) == 7
        res = chord([chain(m.add.s(1, 1), m.add.s(2)), m.add.s(3, 3)], m.collect_list.s())()
        assert res.get(timeout=T) == [4, 6]
        # a chord whose header has a chord: the inner body's result is one header result
        inner = chord([m.add.s(1, 1), m.add.s(2, 2)], m.tsum.s())
        assert chord([inner, m.add.s(10, 10)], m.collect_list.s())().get(timeout=T) == [6, 20]
        # a chord whose body is a chain
        assert chord([m.add.s(1, 1), m.add.s(1, 1)], m.tsum.s() | m.multiply.s(3))().get(timeout=T) == 12
        # an empty header: the body runs with []
        assert chord([], m.collect_list.s())().get(timeout=T) == []


def test_replace(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = m.replace_with_add.delay(1)
        assert res.get(timeout=T) == 101  # the replacement finished under the original id
        assert chain(m.replace_with_add.s(1), m.multiply.s(2))().get(timeout=T) == 202
        assert m.replace_with_chain.delay(1).get(timeout=T) == 20
        assert m.replace_with_group.delay(3).get(timeout=T) == [0, 2, 4]
        assert chord([m.replace_with_add.s(1), m.add.s(1, 1)], m.collect_list.s())().get(timeout=T) == [101, 2]
        linked = m.replace_with_add.s(2)
        linked.link(m.record.s())
        assert linked.delay().get(timeout=T) == 102
        wait_for(lambda: canvas.notes("record"), T, message="the callback of the replaced task")
        assert canvas.notes("record") == [["102", "None"]]


def test_failure_in_a_chain_fails_the_rest(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        c = chain(m.add.s(1, 1), m.boom.s(), m.add.s(1), m.add.s(2))
        c.link_error(m.on_error_id.s())
        res = c.apply_async()
        with pytest.raises(ValueError, match="boom: 2"):
            res.get(timeout=T)
        third, second, first = res.parent, res.parent.parent, res.parent.parent.parent
        assert first.get(timeout=T) == 2
        for r in (second, third, res):
            assert r.state == "FAILURE" and isinstance(r.result, ValueError)
        wait_for(lambda: canvas.notes("on_error_id"), T, message="the chain's errback")
        assert canvas.notes("on_error_id") == [[second.id]]
        # a failing step before a chord: the chord's header and body fail too
        res = chain(m.boom.s(1), chord([m.add.s(1), m.add.s(2)], m.tsum.s()))()
        with pytest.raises(ValueError, match="boom: 1"):
            res.get(timeout=T)
        assert all(r.state == "FAILURE" for r in res.parent.results)
        assert not canvas.notes("tsum")


def test_ids_roots_and_parents_on_the_wire(canvas: CanvasEnv) -> None:
    m = canvas.m
    with canvas.worker():
        res = chain(m.whoami.s(), m.whoami.s())()
        second = res.get(timeout=T)
        first = res.parent.get(timeout=T)
        assert first == [res.parent.id, None, res.parent.id, None]
        assert second == [res.id, res.parent.id, res.parent.id, None]
        body = chord([m.whoami.s(), m.whoami.s()], m.whoami.s())()
        header_ids = [r.id for r in body.parent]
        values = body.parent.get(timeout=T)
        gid = body.parent.id
        assert [v[3] for v in values] == [gid, gid]
        body_value = body.get(timeout=T)
        assert body_value[0] == body.id and body_value[3] == gid
        # sent by the header task that completed the chord, whose root it inherits
        assert body_value[1] in header_ids and body_value[2] == body_value[1]
        assert AsyncResult(body.id, app=m.app).state == "SUCCESS"
