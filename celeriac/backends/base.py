"""The result backend interface: task meta stored by id, awaited without polling where possible.

Concrete backends implement five primitives on encoded bytes (``_set_many``,
``_get_many``, ``_delete``, ``_wait``, ``_cleanup``); everything else — meta
encoding with ``result_serializer``, PENDING defaults, waiting for a ready
state, group save/restore — is here, once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .. import states
from ..exceptions import BackendDisabled, TimeoutError
from ..protocol import codecs

DEFAULT_EXPIRES = 86400.0


@dataclass(slots=True)
class StoredMeta:
    task_id: str
    status: str
    payload: bytes


@dataclass(slots=True)
class ChordPart:
    task_id: str
    state: str
    result: Any         # the return value, or the exception dict for FAILURE


@dataclass(slots=True)
class ChordReady:
    """What ``chord_join`` hands the one caller that completed a chord and claimed its body."""

    token: str                  # pass to chord_cleanup once the body is sent
    parts: list[ChordPart]      # in group_index order

    @property
    def results(self) -> list[Any]:
        return [p.result for p in self.parts]


#: How long a chord's body claim lasts (the claimer sends the body, then cleans up),
#: and how long a finished chord stays marked "done" so late duplicates are ignored.
CHORD_CLAIM_SECONDS = 60
CHORD_DONE_SECONDS = 300


class ResultBackend(abc.ABC):
    #: True when ``_wait`` is woken by writers (no polling needed).
    push_wakeups = False

    def __init__(self, url: str, *, serializer: str = "json", accept: Collection[str] | None = None,
                 expires: float | None = DEFAULT_EXPIRES, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.serializer = serializer
        self.accept = codecs.accept_set(list(accept) if accept else [serializer])
        self.expires = expires or None  # None or 0: results never expire (as in Celery)
        self.options = dict(options or {})

    # -- primitives ------------------------------------------------------------
    @abc.abstractmethod
    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        """Store each payload (TTL ``self.expires``), never overwriting a stored SUCCESS."""

    @abc.abstractmethod
    def _get_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """Payloads of the ids that have one."""

    @abc.abstractmethod
    def _delete(self, task_ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def _wait(self, task_ids: Sequence[str], timeout: float) -> None:
        """Return when any of ``task_ids`` may have changed, or after ``timeout``."""

    def _cleanup(self) -> int:
        """Delete expired results; returns how many (backends with native TTL return 0)."""
        return 0

    def connect(self) -> None:
        """Open connections eagerly; raise OperationalError when unreachable."""

    def close(self) -> None:
        """Release connections."""

    def prepare_wait(self, task_ids: Sequence[str]) -> None:
        """Called before a task is sent when its caller will wait (subscribe early)."""

    def finish_wait(self, task_ids: Sequence[str]) -> None:
        """The caller no longer waits for ``task_ids`` (undoes ``prepare_wait``)."""
        return None

    # -- encoding --------------------------------------------------------------
    def encode(self, meta: dict[str, Any]) -> bytes:
        return codecs.dumps(meta, self.serializer)[2]

    def decode(self, payload: bytes) -> dict[str, Any]:
        payload = codecs.maybe_decompress_result(payload)
        mime = codecs.resolve_content_type(self.serializer)
        if mime == codecs.JSON or payload[:1] in (b"{", b"["):
            return codecs.loads(payload, codecs.JSON)
        return codecs.loads(payload, mime, accept=self.accept)

    # -- public API ------------------------------------------------------------
    def store_metas(self, metas: Sequence[dict[str, Any]]) -> None:
        """Store several meta dicts (as built by ``protocol.make_meta``) in one round trip."""
        self._set_many([StoredMeta(m["task_id"], m["status"], self.encode(m)) for m in metas])

    def store_meta(self, meta: dict[str, Any]) -> None:
        self.store_metas([meta])

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        return self.get_many([task_id])[task_id]

    def get_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        raw = self._get_many(task_ids)
        out = {}
        for tid in task_ids:
            payload = raw.get(tid)
            out[tid] = self.decode(payload) if payload is not None else pending_meta(tid)
        return out

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5) -> dict[str, Any]:
        """Block until ``task_id`` is in a ready state; TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.prepare_wait([task_id])
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"The operation timed out waiting for task {task_id}.")
            step = interval if not self.push_wakeups else 5.0
            self._wait([task_id], step if remaining is None else min(step, remaining))

    def wait_for_many(self, task_ids: Sequence[str], timeout: float | None = None,
                      interval: float = 0.5) -> dict[str, dict[str, Any]]:
        """Wait until every id is ready.  Ids are checked a window at a time (tasks finish
        roughly in the order they were sent), so waiting for N results costs O(N) reads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.prepare_wait(task_ids)
        done: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(task_ids))
        window = 1000
        while pending:
            head = pending[:window]
            for tid, meta in self.get_many(head).items():
                if meta["status"] in states.READY_STATES:
                    done[tid] = meta
            if all(t in done for t in head):
                pending = pending[window:]
                continue
            pending = [t for t in head if t not in done] + pending[window:]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"The operation timed out waiting for {len(pending)} tasks.")
            step = interval if not self.push_wakeups else 5.0
            self._wait(head, step if remaining is None else min(step, remaining))
        return {t: done[t] for t in task_ids}

    def forget(self, task_id: str) -> None:
        self._delete([task_id])

    def cleanup(self) -> int:
        return self._cleanup()

    # -- groups (celery-taskset-meta-<id>) -------------------------------------
    def save_group(self, group_id: str, result_tuple: Any) -> None:
        self._set_many([StoredMeta(group_key(group_id), "GROUP", self.encode({"result": result_tuple}))])

    def restore_group(self, group_id: str) -> Any | None:
        raw = self._get_many([group_key(group_id)]).get(group_key(group_id))
        return None if raw is None else self.decode(raw).get("result")

    def delete_group(self, group_id: str) -> None:
        self._delete([group_key(group_id)])

    # -- chords (celery-wire 3.7: size key, join with dedupe, one claim on the body) --
    @abc.abstractmethod
    def chord_set_size(self, group_id: str, size: int) -> None:
        """Record how many header results chord ``group_id`` waits for (before sending the header)."""

    @abc.abstractmethod
    def chord_join(self, group_id: str, task_id: str, group_index: int | None, state: str,
                   result: Any) -> ChordReady | None:
        """Count one finished header task, atomically and once per ``(task_id, group_index)``.

        ``result`` is the return value (an exception in its dict form for FAILURE).
        Returns the parts in ``group_index`` order to the one caller that completed
        the chord and won the claim on its body, ``None`` to every other caller.
        That caller sends the body, then calls ``chord_cleanup(group_id, ready.token)``.
        """

    @abc.abstractmethod
    def chord_cleanup(self, group_id: str, token: str) -> None:
        """Drop the chord's parts and mark it done, if ``token`` still holds the claim."""

    def encode_chord_part(self, task_id: str, state: str, result: Any) -> bytes:
        """Celery's chord member: ``[1, task_id, state, result]`` in the result serializer."""
        return codecs.dumps([1, task_id, state, result], self.serializer)[2]

    def decode_chord_part(self, raw: bytes) -> ChordPart:
        member: Any = self.decode(raw)
        return ChordPart(member[1], member[2], member[3])




def group_key(group_id: str) -> str:
    return f"taskset:{group_id}"


def pending_meta(task_id: str) -> dict[str, Any]:
    return {"status": states.PENDING, "result": None, "traceback": None, "children": [],
            "date_done": None, "task_id": task_id}


class DisabledBackend(ResultBackend):
    """No result backend configured: storing is a no-op, reading explains what to set."""

    def _fail(self) -> Any:
        raise BackendDisabled(
            "No result backend is configured. Set result_backend (e.g. 'redis://localhost:6379/0' "
            "or 'sqlite:///celeriac.db') to read task results.")

    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        return None

    def _get_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        return self._fail()  # type: ignore[no-any-return]

    def _delete(self, task_ids: Sequence[str]) -> None:
        return None

    def _wait(self, task_ids: Sequence[str], timeout: float) -> None:
        self._fail()

    def chord_set_size(self, group_id: str, size: int) -> None:
        self._fail()

    def chord_join(self, group_id: str, task_id: str, group_index: int | None, state: str,
                   result: Any) -> ChordReady | None:
        return self._fail()  # type: ignore[no-any-return]

    def chord_cleanup(self, group_id: str, token: str) -> None:
        self._fail()
