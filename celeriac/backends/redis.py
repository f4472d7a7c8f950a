"""Results in Redis, laid out exactly as Celery's Redis result backend lays them out.

A Celery client reads what our workers store and the other way round (celery-wire.md §3).
Keys (each preceded by ``result_backend_transport_options['global_keyprefix']``, to
which ``_`` is appended unless it ends in one of ``: _ - .``, as Celery does)::

    celery-task-meta-<task_id>        string: the meta JSON; TTL result_expires;
                                      also the pub/sub channel its writes are published on
    celery-taskset-meta-<group_id>    string: a saved GroupResult ({"result": <tuple>})
    celery-taskset-meta-<gid>.j       zset: chord parts "[1, task_id, state, result]" by group_index
    celery-taskset-meta-<gid>.d       set: "<task_id>:<group_index>" already counted (dedupe)
    celery-taskset-meta-<gid>.c       string: the body claim token, then "done" for 300 s
    celery-taskset-meta-<gid>.t       string int: tasks added to a running chord (read only)
    celery-taskset-meta-<gid>.s       string int: the chord size

Atomic steps are the Lua scripts next to this file: ``redis_store.lua`` (a batch of
metas: SET with TTL + PUBLISH each, skipping ids whose stored status is SUCCESS, and
RETRY over FAILURE/REVOKED),
``redis_chord_join.lua`` and ``redis_chord_cleanup.lua`` (Celery 5.7's chord join).

Waiting: each backend keeps, per process, one pub/sub connection read by a daemon
thread (``_redis_listener.py``); a lone ``wait_for`` waits on a connection of its own
instead (``_redis_direct.py``).  A waiter SUBSCRIBEs to its ids' channels (one channel
per id, as Celery does), then GETs them once, then takes the metas straight from the
published messages; it reads the keys again only after a reconnect, or every
``RECHECK_SECONDS`` as a safety net.  So waiting for N results costs O(N) whatever
order they finish in.  A PSUBSCRIBE to ``celery-task-meta-*`` would be simpler, but
it delivers every result stored by every worker of the cluster to every waiting
client, which costs far more than N channel subscriptions (a SUBSCRIBE is O(1) per
channel on the server, and we send them 1,000 to a command).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import states
from .._redis_url import RedisConnection, connect, map_errors
from .._resp import Script, pack
from ..brokers._redis_fast import FastLane
from ..exceptions import OperationalError, TimeoutError
from ._redis_direct import RECHECK_SECONDS, DirectWait
from ._redis_listener import _Listener, _Mailbox
from .base import (
    CHORD_CLAIM_SECONDS,
    CHORD_DONE_SECONDS,
    ChordReady,
    ResultBackend,
    StoredMeta,
)

TASK_KEY = "celery-task-meta-"
GROUP_KEY = "celery-taskset-meta-"
GROUP_ID_PREFIX = "taskset:"          # how ResultBackend names a group in _set_many/_get_many
BATCH = 1000                          # ids per MGET / DEL / SUBSCRIBE / script call
EARLY_WAITS_MAX = 10_000              # ids subscribed by prepare_wait() without a wait yet
GATHER_ABOVE, GATHER_SECONDS = 64, 0.001  # a wait for more results than this wakes at most every 1 ms


def result_key_prefix(prefix: str | None) -> str:
    """Celery's rule for the result backend's ``global_keyprefix``."""
    if prefix and prefix[-1] not in ":_-.":
        return prefix + "_"
    return prefix or ""


def _script(filename: str) -> Script:
    """A Lua file beside this module, run with EVALSHA (loaded on first use and after SCRIPT FLUSH)."""
    return Script(Path(__file__).with_name(filename).read_text())


STORE = _script("redis_store.lua")
CHORD_JOIN = _script("redis_chord_join.lua")
CHORD_CLEANUP = _script("redis_chord_cleanup.lua")


class RedisBackend(ResultBackend):
    push_wakeups = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.prefix = result_key_prefix(self.options.get("global_keyprefix"))
        self._conn: RedisConnection = connect(url, self.options)
        self.client = self._conn.client
        self.where = self._conn.where
        self._listener_obj: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._local = threading.local()
        self._lane = FastLane(self.client)  # reads on the hot path (get): one held connection
        self._direct_obj: DirectWait | None = None

    # -- keys ----------------------------------------------------------------------
    def key_for(self, task_id: str) -> str:
        """``celery-task-meta-<id>``, or ``celery-taskset-meta-<gid>`` for ``taskset:<gid>``."""
        if task_id.startswith(GROUP_ID_PREFIX):
            return f"{self.prefix}{GROUP_KEY}{task_id[len(GROUP_ID_PREFIX):]}"
        return f"{self.prefix}{TASK_KEY}{task_id}"

    def group_meta_key(self, group_id: str) -> str:
        return f"{self.prefix}{GROUP_KEY}{group_id}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with map_errors(f"Redis result backend at {self.where}"):
            yield

    # -- connections -----------------------------------------------------------------
    def connect(self) -> None:
        with self._errors():
            self.client.execute("PING")

    def close(self) -> None:
        with self._listener_lock:
            listener, self._listener_obj = self._listener_obj, None
        if listener is not None and listener.pid == os.getpid():
            listener.stop()
        self._local = threading.local()
        direct, self._direct_obj = self._direct_obj, None
        if direct is not None and direct.pid == os.getpid():
            direct.close()
        self._lane.close()
        self._conn.close()

    def _listener(self) -> _Listener:
        """This process's listener (a forked child makes its own and leaves the parent's alone)."""
        listener = self._listener_obj
        if listener is None or listener.pid != os.getpid():
            with self._listener_lock:
                listener = self._listener_obj
                if listener is None or listener.pid != os.getpid():
                    wake = f"{self.prefix}celeriac-results-wake-{uuid.uuid4().hex}".encode()
                    listener = self._listener_obj = _Listener(self.client, wake, self.where)
        return listener

    # -- primitives --------------------------------------------------------------------
    def _ttl_ms(self) -> int:
        return int(self.expires * 1000) if self.expires else 0

    def _set_many(self, items: Sequence[StoredMeta]) -> None:
        if not items:
            return
        ttl = self._ttl_ms()
        calls = []
        for i in range(0, len(items), BATCH):
            chunk = items[i:i + BATCH]
            args: list[Any] = [ttl]
            for m in chunk:
                args += (m.status, m.payload)
            calls.append(([self.key_for(m.task_id) for m in chunk], args))
        with self._errors():
            if len(calls) == 1:
                self.client.evalsha(STORE, *calls[0])
            else:
                self.client.evalsha_many(STORE, calls)

    def redis_store_args(self, metas: Sequence[dict[str, Any]]) -> list[Any]:
        """``store_metas`` as arguments for a script on the same server that stores them with
        redis_store.lua's rules (the broker's fetch, which settles a worker's batch):
        ``[ttl_ms, key, status, payload, ...]``."""
        args: list[Any] = [self._ttl_ms()]
        for m in metas:
            args += (self.key_for(m["task_id"]), m["status"], self.encode(m))
        return args

    def _get_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """Reads are idempotent: a connection lost mid-read (another thread closed the
        backend, a server restart) is retried once on a fresh connection."""
        try:
            return self._read_many(task_ids)
        except OperationalError:
            return self._read_many(task_ids)

    def _read_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        ids = list(task_ids)
        if not ids:
            return {}
        with self._errors():
            if len(ids) <= BATCH:
                keys = [self.key_for(t) for t in ids]
                got = self._lane.call(pack("MGET", *keys), 1)
                values = got[0] if got is not None else self.client.execute("MGET", *keys)
            else:
                chunks = self.client.pipeline([("MGET", *(self.key_for(t) for t in ids[i:i + BATCH]))
                                               for i in range(0, len(ids), BATCH)])
                values = [v for chunk in chunks for v in chunk]
        return {t: v for t, v in zip(ids, values, strict=True) if isinstance(v, bytes)}

    def _delete(self, task_ids: Sequence[str]) -> None:
        ids = list(task_ids)
        with self._errors():
            for i in range(0, len(ids), BATCH):
                self.client.execute("DEL", *[self.key_for(t) for t in ids[i:i + BATCH]])

    # -- waiting -----------------------------------------------------------------------
    def _channels(self, task_ids: Sequence[str]) -> list[bytes]:
        return [self.key_for(t).encode() for t in task_ids]

    def _early_box(self, listener: _Listener) -> _Mailbox:
        """This thread's mailbox for prepare_wait() (a wait call uses its own)."""
        box = getattr(self._local, "box", None)
        if box is None or self._local.owner is not listener:
            box = self._local.box = _Mailbox()
            self._local.owner = listener
        return box

    def prepare_wait(self, task_ids: Sequence[str]) -> None:
        listener = self._listener()
        box = self._early_box(listener)
        listener.subscribe(box, self._channels(task_ids))
        self._local.generation = listener.generation
        extra = len(box.counts) - EARLY_WAITS_MAX
        if extra > 0:  # prepared but never waited for: drop the oldest
            listener.unsubscribe(box, list(itertools.islice(box.counts, extra)))

    def finish_wait(self, task_ids: Sequence[str]) -> None:
        listener = self._listener()
        listener.unsubscribe(self._early_box(listener), self._channels(task_ids))

    def _wait(self, task_ids: Sequence[str], timeout: float) -> None:
        listener = self._listener()
        box = self._early_box(listener)
        if not box.counts:
            self.prepare_wait(task_ids)
        listener.wait(box, timeout, getattr(self._local, "generation", listener.generation))
        listener.take(box)
        self._local.generation = listener.generation

    def _direct(self) -> DirectWait:
        direct = self._direct_obj
        if direct is None or direct.pid != os.getpid():
            direct = self._direct_obj = DirectWait(self.client.params, self.where)
        return direct

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5) -> dict[str, Any]:
        """A lone waiter waits on a connection of its own (``_redis_direct``); when that one
        is busy or lost, through the listener."""
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            meta = self._direct().wait(self.key_for(task_id).encode(), self.decode, deadline)
            if meta is not None:
                return meta
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self.wait_for_many([task_id], timeout=left)[task_id]
        except TimeoutError:
            raise TimeoutError(f"The operation timed out waiting for task {task_id}.") from None

    def wait_for_many(self, task_ids: Sequence[str], timeout: float | None = None,
                      interval: float = 0.5) -> dict[str, dict[str, Any]]:
        """Subscribe, read once, then take each meta from its published message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = list(dict.fromkeys(task_ids))
        done: dict[str, dict[str, Any]] = {}
        if len(ids) > 1:
            # Many ids (a group, a bulk send): those finished already need no channel
            # (one read now; the others are read again once subscribed, as below).
            done.update(self._ready_metas(ids))
            if len(done) == len(ids):
                return {t: done[t] for t in task_ids}
            ids = [t for t in ids if t not in done]
        channels = dict(zip(self._channels(ids), ids, strict=True))
        listener = self._listener()
        box = _Mailbox()
        listener.subscribe(box, list(channels))
        try:
            pending = set(ids)
            refresh = True
            generation, last_read = listener.generation, 0.0
            while True:
                if refresh:
                    generation, last_read = listener.generation, time.monotonic()
                    for tid, meta in self._ready_metas([t for t in ids if t in pending]).items():
                        done[tid] = meta
                        pending.discard(tid)
                if not pending:
                    return {t: done[t] for t in task_ids}
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"The operation timed out waiting for {len(pending)} tasks.")
                step = RECHECK_SECONDS - (time.monotonic() - last_read)
                if len(pending) > GATHER_ABOVE:  # many to come: wake for several at a time
                    time.sleep(GATHER_SECONDS)
                listener.wait(box, max(0.0, step if remaining is None else min(step, remaining)), generation)
                refresh = False
                for channel, payload in listener.take(box):
                    tid = channels.get(channel, "")
                    if tid not in pending:
                        continue
                    try:
                        meta = self.decode(payload)
                    except Exception:
                        refresh = True      # e.g. a payload we may not decode: read the key instead
                        continue
                    if meta.get("status") in states.READY_STATES:
                        done[tid] = meta
                        pending.discard(tid)
                if listener.generation != generation or time.monotonic() - last_read >= RECHECK_SECONDS:
                    refresh = True
                if listener.stopping:   # another thread closed the backend: carry on with a new listener
                    listener.unsubscribe(box, list(channels))
                    listener, box = self._listener(), _Mailbox()
                    listener.subscribe(box, list(channels))
                    refresh = True
        finally:
            listener.unsubscribe(box, list(channels))

    def _ready_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metas of those ids that are ready (get_many without a pending meta per id)."""
        out = {}
        for tid, payload in self._get_many(task_ids).items():
            meta = self.decode(payload)
            if meta["status"] in states.READY_STATES:
                out[tid] = meta
        return out

    # -- chords (celery-wire 3.7) ------------------------------------------------------------
    def _chord_keys(self, group_id: str) -> dict[str, str]:
        gk = self.group_meta_key(group_id)
        return {"j": gk + ".j", "d": gk + ".d", "c": gk + ".c", "t": gk + ".t", "s": gk + ".s", "meta": gk}

    def _ttl_seconds(self) -> int:
        return max(1, math.ceil(self.expires)) if self.expires else 0

    def chord_set_size(self, group_id: str, size: int) -> None:
        k = self._chord_keys(group_id)
        ttl = self._ttl_seconds()
        with self._errors():
            self.client.pipeline([("DEL", k["c"]), ("SET", k["s"], int(size), *(("EX", ttl) if ttl else ()))],
                                 transaction=True)

    def chord_join(self, group_id: str, task_id: str, group_index: int | None, state: str,
                   result: Any) -> ChordReady | None:
        k = self._chord_keys(group_id)
        member = self.encode_chord_part(task_id, state, result)
        score = "+inf" if group_index is None else str(int(group_index))
        token = uuid.uuid4().hex
        with self._errors():
            members = self.client.evalsha(
                CHORD_JOIN, [k["j"], k["d"], k["c"], k["t"], k["s"], k["meta"]],
                [member, score, f"{task_id}:{group_index}", self._ttl_seconds(), token,
                 int(CHORD_CLAIM_SECONDS)])
        if members is None:
            return None
        return ChordReady(token, [self.decode_chord_part(raw) for raw in members])

    def chord_cleanup(self, group_id: str, token: str) -> None:
        k = self._chord_keys(group_id)
        with self._errors():
            self.client.evalsha(CHORD_CLEANUP, [k["c"], k["j"], k["t"], k["s"], k["d"]],
                          [token, int(CHORD_DONE_SECONDS)])
