"""Waiting for results from coroutines (``await AsyncResult.aget()``).

One thread per result backend waits for every id that coroutines await, in any
event loop, and wakes each waiter's future through its loop.  So a thousand
coroutines awaiting slow tasks cost one thread, not a thousand, and never fill
the loop's default executor (which ``delay_async`` and ``aget`` itself use for
their short blocking calls).

The thread reads the pending ids in one ``get_many`` per round and sleeps in the
backend's own wait (woken by the SQLite bell or Redis pub/sub), at most
``STEP`` seconds, so an id added meanwhile is seen within ``STEP``.  It exits
after ``IDLE_EXIT`` seconds with nothing to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Any

from . import states
from .exceptions import TimeoutError

logger = logging.getLogger("celeriac.result")
STEP = 0.2
IDLE_EXIT = 30.0
WINDOW = 1000


class ResultWaiter:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._added = threading.Event()
        self._thread: threading.Thread | None = None

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The meta of ``task_id`` once it is ready; :class:`TimeoutError` after ``timeout``."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.setdefault(task_id, []).append(fut)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="celeriac-result-waiter",
                                                daemon=True)
                self._thread.start()
        self._added.set()
        try:
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"The operation timed out waiting for task {task_id}.") from None
        finally:
            with self._lock:
                futs = self._waiting.get(task_id)
                if futs is not None and fut in futs:
                    futs.remove(fut)
                    if not futs:
                        del self._waiting[task_id]

    # -- the waiter thread -------------------------------------------------------
    def _run(self) -> None:
        backend = self.backend
        finish = getattr(backend, "finish_wait", None)
        armed: set[str] = set()  # ids the backend was told we wait for
        idle_since = time.monotonic()
        while True:
            self._added.clear()  # before reading: an id added after this read sets it again
            with self._lock:
                ids = list(self._waiting)
                if not ids and time.monotonic() - idle_since > IDLE_EXIT:
                    self._thread = None
                    return
            if not ids:
                self._added.wait(STEP * 5)
                continue
            idle_since = time.monotonic()
            try:
                new = [t for t in ids if t not in armed]
                if new:
                    backend.prepare_wait(new)  # subscribe before reading (Redis pub/sub)
                    armed.update(new)
                pending = []
                for start in range(0, len(ids), WINDOW):
                    for tid, meta in backend.get_many(ids[start:start + WINDOW]).items():
                        if meta["status"] in states.READY_STATES:
                            self._resolve(tid, meta)
                        else:
                            pending.append(tid)
                done = armed.difference(pending)
                if done and finish is not None:
                    finish(list(done))
                armed.intersection_update(pending)
                if pending and not self._added.is_set():
                    backend._wait(pending[:WINDOW], STEP)
            except Exception as exc:  # the backend is down: keep the waiters, try again
                logger.warning("Waiting for results failed, retrying: %r", exc)
                self._added.wait(1.0)

    def _resolve(self, task_id: str, meta: dict[str, Any]) -> None:
        with self._lock:
            futs = self._waiting.pop(task_id, [])
        for fut in futs:
            try:
                fut.get_loop().call_soon_threadsafe(_set_result, fut, meta)
            except RuntimeError:
                pass  # that event loop is closed


def _set_result(fut: asyncio.Future[dict[str, Any]], meta: dict[str, Any]) -> None:
    if not fut.done():
        fut.set_result(meta)


_waiters: weakref.WeakKeyDictionary[Any, ResultWaiter] = weakref.WeakKeyDictionary()
_waiters_lock = threading.Lock()


def waiter_for(backend: Any) -> ResultWaiter:
    with _waiters_lock:
        waiter = _waiters.get(backend)
        if waiter is None:
            waiter = _waiters[backend] = ResultWaiter(backend)
        return waiter
