"""Results in this process only (``cache+memory://``, ``memory://``): for unit tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .base import CHORD_CLAIM_SECONDS, CHORD_DONE_SECONDS, ChordReady, ResultBackend, StoredMeta


class MemoryBackend(ResultBackend):
    push_wakeups = True
    _shared: dict[str, tuple[dict[str, tuple[str, bytes, float | None]], threading.Condition]] = {}
    #: group id -> {"size", "claim" (None | token | "done"), "claim_until", "parts": {(tid, idx): part}}
    _shared_chords: dict[str, dict[str, dict[str, Any]]] = {}

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._data, self._cond = self._shared.setdefault(url, ({}, threading.Condition()))
        self._chords = self._shared_chords.setdefault(url, {})

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

    # -- chords ------------------------------------------------------------------
    def chord_set_size(self, group_id: str, size: int) -> None:
        with self._cond:
            chord = self._chords.setdefault(group_id, {"parts": {}})
            chord.update(size=int(size), claim=None, claim_until=0.0)

    def chord_join(self, group_id: str, task_id: str, group_index: int | None, state: str,
                   result: Any) -> ChordReady | None:
        now = time.monotonic()
        with self._cond:
            chord = self._chords.setdefault(group_id, {"parts": {}, "size": None, "claim": None,
                                                       "claim_until": 0.0})
            if chord.get("claim") == "done":
                return None
            # Stored encoded, as the other backends do, so results read back the same way.
            chord["parts"].setdefault((task_id, group_index), self.encode_chord_part(task_id, state, result))
            size = chord.get("size")
            if size is None or len(chord["parts"]) < size:
                return None
            if chord.get("claim") is not None and chord["claim_until"] > now:
                return None
            token = uuid.uuid4().hex
            chord.update(claim=token, claim_until=now + CHORD_CLAIM_SECONDS)
            order = sorted(chord["parts"], key=lambda k: (k[1] is None, k[1] or 0, k[0]))
            return ChordReady(token, [self.decode_chord_part(chord["parts"][k]) for k in order])

    def chord_cleanup(self, group_id: str, token: str) -> None:
        with self._cond:
            chord = self._chords.get(group_id)
            if chord is not None and chord.get("claim") == token:
                chord.update(parts={}, size=None, claim="done", claim_until=time.monotonic() + CHORD_DONE_SECONDS)
