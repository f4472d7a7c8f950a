"""Results in this process only (``cache+memory://``, ``memory://``): for unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from .base import ResultBackend, StoredMeta


class MemoryBackend(ResultBackend):
    push_wakeups = True
    _shared: dict[str, tuple[dict[str, tuple[str, bytes, float | None]], threading.Condition]] = {}

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._data, self._cond = self._shared.setdefault(url, ({}, threading.Condition()))

    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        exp = None if self.expires is None else time.time() + self.expires
        with self._cond:
            for m in items:
                cur = self._data.get(m.task_id)
                if cur is None or cur[0] != "SUCCESS":
                    self._data[m.task_id] = (m.status, m.payload, exp)
            self._cond.notify_all()

    def _get_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self._cond:
            return {t: v[1] for t in task_ids if (v := self._data.get(t)) and (v[2] is None or v[2] > now)}

    def _delete(self, task_ids: Sequence[str]) -> None:
        with self._cond:
            for t in task_ids:
                self._data.pop(t, None)

    def _wait(self, task_ids: Sequence[str], timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def _cleanup(self) -> int:
        now = time.time()
        with self._cond:
            dead = [t for t, v in self._data.items() if v[2] is not None and v[2] <= now]
            for t in dead:
                del self._data[t]
        return len(dead)
