"""The contract every beat store passes (memory, SQLite, Redis): definitions, compare-and-set ticks, lease."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REDIS_URL, _redis_up

from celeriac.beat.entries import Entry
from celeriac.beat.store import BeatStore, MemoryBeatStore, store_for_url
from celeriac.beat.ticks import SECOND

S = SECOND
EVERY_5 = {"type": "schedule", "run_every": 5.0, "relative": False, "tz": None}
EVERY_9 = {"type": "schedule", "run_every": 9.0, "relative": False, "tz": None}


def entry(name: str, next_run: int = 100 * S, schedule: dict | None = None, **kw) -> Entry:
    return Entry(name=name, task=kw.pop("task", "proj.t"), schedule_dict=schedule or EVERY_5,
                 next_run=next_run, **kw)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], BeatStore]]:
    kind = request.param
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    if kind == "redis":
        if not _redis_up():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        url = REDIS_URL
    else:
        url = {"memory": f"memory://{uuid.uuid4().hex}", "sqlite": f"sqlite:///{tmp_path}/b.db"}[kind]
    made: list[BeatStore] = []

    def factory() -> BeatStore:
        store = store_for_url(url, {"global_keyprefix": prefix})
        made.append(store)
        return store

    yield factory
    for s in made:
        s.close()
    if kind == "redis":
        import redis
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
    if kind == "memory":
        MemoryBeatStore._shared.pop(url, None)


def test_put_get_list_delete(make_store):
    s = make_store()
    assert s.entries() == [] and s.get("a") is None and s.next_due() is None
    e = entry("b", args=[1, "x"], kwargs={"k": [1, 2]}, options={"queue": "q", "priority": 3})
    assert s.put(e)
    assert s.put(entry("a", 50 * S))
    got = s.get("b")
    assert got is not None
    assert (got.task, got.schedule_dict, got.args, got.kwargs, got.options) == (
        "proj.t", EVERY_5, [1, "x"], {"k": [1, 2]}, {"queue": "q", "priority": 3})
    assert (got.enabled, got.source, got.next_run, got.last_run, got.total_run_count) == (True, "api", 100 * S,
                                                                                          None, 0)
    assert [x.name for x in s.entries()] == ["a", "b"]
    assert s.next_due() == 50 * S
    assert s.delete("a") and not s.delete("a")
    assert [x.name for x in s.entries()] == ["b"]


def test_put_existing_needs_replace_and_keeps_state_unless_the_schedule_changes(make_store):
    s = make_store()
    s.put(entry("a", 100 * S))
    assert not s.put(entry("a", 999 * S, task="other"))
    assert s.get("a").task == "proj.t"
    assert s.claim("a", 100 * S, 105 * S, 100 * S, "me", 100 * S)
    s.confirm("a", 100 * S)
    s.set_enabled("a", False, 0)
    assert s.put(entry("a", 999 * S, task="other", args=[7]), replace=True)
    got = s.get("a")
    assert (got.task, got.args, got.next_run, got.total_run_count, got.enabled) == ("other", [7], 105 * S, 1, False)
    assert s.put(entry("a", 999 * S, schedule=EVERY_9), replace=True)
    got = s.get("a")
    assert (got.schedule_dict, got.next_run) == (EVERY_9, 999 * S)


def test_disabled_entries_are_never_due_and_reenabling_restarts_them(make_store):
    s = make_store()
    s.put(entry("a", 100 * S))
    s.put(entry("b", 200 * S))
    assert s.set_enabled("a", False, 0)
    assert [e.name for e in s.due(150 * S)] == []
    assert s.next_due() == 200 * S
    assert not s.claim("a", 100 * S, 105 * S, 100 * S, "me", 150 * S)
    assert s.set_enabled("a", True, 500 * S)
    assert s.get("a").next_run == 500 * S and s.get("a").enabled
    assert s.set_enabled("a", True, 900 * S)  # already enabled: next_run kept
    assert s.get("a").next_run == 500 * S
    assert not s.set_enabled("missing", True, 0)
    assert [e.name for e in s.due(1000 * S)] == ["b", "a"]  # earliest first


def test_sync_config_adds_updates_and_removes_only_config_rows(make_store):
    s = make_store()
    s.put(entry("api-one", 10 * S))
    s.sync_config([entry("c1", 100 * S), entry("c2", 100 * S)])
    assert {e.name: e.source for e in s.entries()} == {"api-one": "api", "c1": "config", "c2": "config"}
    assert s.claim("c1", 100 * S, 105 * S, 100 * S, "me", 100 * S)
    s.confirm("c1", 100 * S)
    s.set_enabled("c2", False, 0)
    # restart with c1 unchanged but new args, c2 removed from the file, c3 new
    s.sync_config([entry("c1", 777 * S, args=[1]), entry("c3", 300 * S)])
    rows = {e.name: e for e in s.entries()}
    assert set(rows) == {"api-one", "c1", "c3"}
    assert (rows["c1"].next_run, rows["c1"].args, rows["c1"].total_run_count) == (105 * S, [1], 1)
    assert rows["c3"].next_run == 300 * S
    s.sync_config([entry("c1", 777 * S, schedule=EVERY_9)])  # schedule changed: restarts
    assert s.get("c1").next_run == 777 * S
    s.sync_config([])
    assert [e.name for e in s.entries()] == ["api-one"]


def test_claim_is_a_compare_and_set(make_store):
    s = make_store()
    s.put(entry("a", 100 * S))
    assert not s.claim("a", 99 * S, 105 * S, 99 * S, "x", 100 * S)  # wrong expected
    assert not s.claim("missing", 100 * S, 105 * S, 100 * S, "x", 100 * S)
    assert s.claim("a", 100 * S, 105 * S, 100 * S, "x", 101 * S)
    assert not s.claim("a", 100 * S, 105 * S, 100 * S, "y", 101 * S)  # the same tick again
    got = s.get("a")
    assert (got.next_run, got.last_run, got.total_run_count) == (105 * S, 100 * S, 1)
    assert (got.pending_tick, got.pending_owner, got.pending_since) == (100 * S, "x", 101 * S)
    # while a tick is pending, later ticks wait behind it
    assert not s.claim("a", 105 * S, 110 * S, 105 * S, "x", 106 * S)
    assert not s.advance("a", 105 * S, 110 * S)
    assert [e.name for e in s.pending()] == ["a"]
    s.confirm("a", 99 * S)  # not the pending tick: no effect
    assert s.get("a").pending_tick == 100 * S
    s.confirm("a", 100 * S)
    got = s.get("a")
    assert (got.pending_tick, got.pending_owner, got.pending_since) == (None, None, None)
    assert s.pending() == []
    assert s.advance("a", 105 * S, 110 * S) and not s.advance("a", 105 * S, 110 * S)
    assert s.get("a").next_run == 110 * S and s.get("a").total_run_count == 1


def test_take_pending_adopts_a_dead_senders_tick_once(make_store):
    s = make_store()
    s.put(entry("a", 100 * S))
    assert s.claim("a", 100 * S, 105 * S, 100 * S, "dead", 100 * S)
    assert not s.take_pending("a", 100 * S, "someone-else", "me", 110 * S)
    assert s.take_pending("a", 100 * S, "dead", "me", 110 * S)
    assert not s.take_pending("a", 100 * S, "dead", "other", 110 * S)
    got = s.get("a")
    assert (got.pending_owner, got.pending_since) == ("me", 110 * S)


def test_two_clients_racing_for_one_tick_have_one_winner(make_store):
    stores = [make_store() for _ in range(4)]
    stores[0].put(entry("a", 100 * S))
    for rnd in range(20):
        tick = (100 + 5 * rnd) * S
        wins: list[int] = []
        barrier = threading.Barrier(len(stores))

        def race(i: int, tick: int = tick, barrier: threading.Barrier = barrier,
                 wins: list[int] = wins) -> None:
            barrier.wait()
            if stores[i].claim("a", tick, tick + 5 * S, tick, f"o{i}", tick):
                wins.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(wins) == 1, (rnd, wins)
        stores[wins[0]].confirm("a", tick)
    assert stores[1].get("a").total_run_count == 20


def test_lease_acquire_renew_expire_release(make_store):
    a, b = make_store(), make_store()
    assert a.leader(0) is None
    assert a.acquire("A", 5 * S, 100 * S)
    assert a.leader(101 * S)[0] == "A"
    assert not b.acquire("B", 5 * S, 101 * S)
    assert a.acquire("A", 5 * S, 103 * S)  # renew
    assert not b.acquire("B", 5 * S, 106 * S)
    b.release("B")  # not the holder: no effect
    assert a.leader(104 * S)[0] == "A"
    a.release("A")
    assert a.leader(104 * S) is None
    assert b.acquire("B", 5 * S, 104 * S)
    assert not a.acquire("A", 5 * S, 105 * S)


def test_an_expired_lease_is_taken_over(make_store):
    a, b = make_store(), make_store()
    assert a.acquire("A", 1 * S, 100 * S)
    assert not b.acquire("B", 1 * S, 100 * S + 500_000)
    if isinstance(a, MemoryBeatStore) or type(a).__name__ == "SQLiteBeatStore":
        assert b.acquire("B", 1 * S, 102 * S)  # these stores trust the callers' clock
    else:
        import time
        time.sleep(1.2)  # Redis expires the lease by its own clock
        assert b.acquire("B", 1 * S, 102 * S)
    assert b.leader(102 * S)[0] == "B"
    assert not a.acquire("A", 1 * S, 102 * S)
