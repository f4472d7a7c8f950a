"""``task.request`` is per asyncio task and per thread (a context variable), and stacks."""

from __future__ import annotations

import asyncio
import threading

from celeriac import _state


def test_nested_requests_stack_and_unwind():
    assert _state.current_task_request() is None
    _state.push_request("outer")
    _state.push_request("inner")
    assert _state.current_task_request() == "inner"
    _state.pop_request()
    assert _state.current_task_request() == "outer"
    _state.pop_request()
    assert _state.current_task_request() is None
    _state.pop_request()  # an extra pop is harmless
    assert _state.current_task_request() is None


def test_concurrent_coroutines_each_see_their_own_request():
    async def one(name: str) -> list[str]:
        _state.push_request(name)
        seen = []
        for _ in range(5):
            await asyncio.sleep(0)
            seen.append(_state.current_task_request())
        _state.pop_request()
        return seen

    async def main() -> list[list[str]]:
        _state.push_request("parent")
        try:
            return await asyncio.gather(*(one(f"r{i}") for i in range(50)))
        finally:
            assert _state.current_task_request() == "parent"
            _state.pop_request()

    results = asyncio.run(main())
    assert results == [[f"r{i}"] * 5 for i in range(50)]
    assert _state.current_task_request() is None


def test_threads_each_see_their_own_request():
    seen: dict[int, object] = {}
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        _state.push_request(i)
        barrier.wait()
        seen[i] = _state.current_task_request()
        _state.pop_request()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {0: 0, 1: 1, 2: 2, 3: 3}
