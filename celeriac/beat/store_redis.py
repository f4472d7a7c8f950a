"""Beat's store on the Redis broker's server, under the broker's ``global_keyprefix``.

Layout (every key is preceded by ``global_keyprefix``)::

    celeriac.beat.entry.<name>   hash: task, schedule, args, kwargs, options (JSON texts),
                                 enabled ("1"/"0"), source, next_run, last_run,
                                 total_run_count, pending_tick, pending_owner, pending_since
                                 (times: integer microseconds since the epoch, as decimal text)
    celeriac.beat.names          set: every entry name
    celeriac.beat.due            zset: name -> next_run, enabled entries only
    celeriac.beat.pending        set: names with a claimed tick not yet confirmed sent
    celeriac.beat.lease          string: the leader's id, expiring (PX) by the server's clock

Every change is one Lua script (``redis_beat_*.lua`` beside this file).  A claim
compares ``next_run`` as text, so it is exact; microsecond times stay below
2**53 and are exact as zset scores too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._redis_url import connect, map_errors
from .._resp import Script
from ..protocol.codecs import json_dumps, json_loads
from .entries import Entry, canonical_json
from .store import BeatStore

ENTRY_PREFIX = "celeriac.beat.entry."
NAMES_KEY = "celeriac.beat.names"
DUE_KEY = "celeriac.beat.due"
PENDING_KEY = "celeriac.beat.pending"
LEASE_KEY = "celeriac.beat.lease"

_HERE = Path(__file__).resolve().parent
_SCRIPTS = ("upsert", "claim", "state", "lease")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _row(name: str, flat: list[bytes]) -> Entry:
    f = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}  # HGETALL's reply
    return Entry(name=name, task=f["task"], schedule_dict=json.loads(f["schedule"]),
                 args=json_loads(f["args"]), kwargs=json_loads(f["kwargs"]), options=json_loads(f["options"]),
                 enabled=f.get("enabled") == "1", source=f.get("source", "api"), next_run=int(f["next_run"]),
                 last_run=_int(f.get("last_run")), total_run_count=int(f.get("total_run_count", 0)),
                 pending_tick=_int(f.get("pending_tick")), pending_owner=f.get("pending_owner"),
                 pending_since=_int(f.get("pending_since")))


def _fields(e: Entry) -> list[str]:
    return [e.name, e.task, canonical_json(e.schedule_dict), json_dumps(e.args), json_dumps(e.kwargs),
            json_dumps(e.options), "1" if e.enabled else "0", str(e.next_run)]


class RedisBeatStore(BeatStore):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        opts = dict(options or {})
        self.prefix = str(opts.pop("global_keyprefix", "") or "")
        self.conn = connect(url, opts)
        self.client = self.conn.client
        self.where = f"Redis beat store at {self.conn.where}"
        self._scripts = {name: Script((_HERE / f"redis_beat_{name}.lua").read_text()) for name in _SCRIPTS}

    def describe(self) -> str:
        return f"redis {self.conn.where} (keys {self.prefix}celeriac.beat.*)"

    def close(self) -> None:
        self.conn.close()

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _entry_key(self, name: str) -> str:
        return self.prefix + ENTRY_PREFIX + name

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        with map_errors(self.where):
            return self.client.evalsha(self._scripts[script], keys, args)

    def _load(self, names: Sequence[str]) -> list[Entry]:
        if not names:
            return []
        with map_errors(self.where):
            hashes = self.client.pipeline([("HGETALL", self._entry_key(name)) for name in names])
        return [_row(n, h) for n, h in zip(names, hashes, strict=True) if h]

    # -- definitions -------------------------------------------------------------
    def sync_config(self, entries: Sequence[Entry]) -> None:
        args: list[Any] = [self._entry_key(""), "sync"]
        for e in entries:
            args += _fields(e)
        self._run("upsert", [self._k(NAMES_KEY), self._k(DUE_KEY)], args)

    def put(self, entry: Entry, replace: bool = False) -> bool:
        args = [self._entry_key(""), "put-replace" if replace else "put", *_fields(entry), entry.source]
        return bool(self._run("upsert", [self._k(NAMES_KEY), self._k(DUE_KEY)], args))

    def _state(self, op: str, name: str, *args: Any) -> bool:
        keys = [self._entry_key(name), self._k(NAMES_KEY), self._k(DUE_KEY), self._k(PENDING_KEY)]
        return bool(self._run("state", keys, [op, name, *args]))

    def delete(self, name: str) -> bool:
        return self._state("delete", name)

    def set_enabled(self, name: str, enabled: bool, next_run: int) -> bool:
        return self._state("enable", name, str(next_run)) if enabled else self._state("disable", name)

    def get(self, name: str) -> Entry | None:
        rows = self._load([name])
        return rows[0] if rows else None

    def entries(self) -> list[Entry]:
        with map_errors(self.where):
            names = sorted(_text(n) for n in self.client.execute("SMEMBERS", self._k(NAMES_KEY)))
        return self._load(names)

    def due(self, now: int) -> list[Entry]:
        with map_errors(self.where):
            names = [_text(n) for n in self.client.execute("ZRANGEBYSCORE", self._k(DUE_KEY), "-inf", now)]
        return sorted(self._load(names), key=lambda e: (e.next_run, e.name))

    def next_due(self) -> int | None:
        with map_errors(self.where):
            first = self.client.execute("ZRANGE", self._k(DUE_KEY), 0, 0, "WITHSCORES")  # [member, score]
        return int(float(first[1])) if first else None

    # -- ticks -----------------------------------------------------------------
    def _cas(self, mode: str, name: str, expected: int, new_next: int, tick: int = 0, owner: str = "",
             now: int = 0) -> bool:
        keys = [self._entry_key(name), self._k(DUE_KEY), self._k(PENDING_KEY)]
        return bool(self._run("claim", keys, [name, str(expected), str(new_next), str(tick), owner, str(now),
                                              mode]))

    def claim(self, name: str, expected: int, new_next: int, tick: int, owner: str, now: int) -> bool:
        return self._cas("claim", name, expected, new_next, tick, owner, now)

    def advance(self, name: str, expected: int, new_next: int) -> bool:
        return self._cas("advance", name, expected, new_next)

    def confirm(self, name: str, tick: int) -> None:
        self._state("confirm", name, str(tick))

    def pending(self) -> list[Entry]:
        with map_errors(self.where):
            names = sorted(_text(n) for n in self.client.execute("SMEMBERS", self._k(PENDING_KEY)))
        return [e for e in self._load(names) if e.pending_tick is not None]

    def take_pending(self, name: str, tick: int, old_owner: str, owner: str, now: int) -> bool:
        return self._state("take", name, str(tick), old_owner, owner, str(now))

    # -- leader lease ------------------------------------------------------------
    def acquire(self, owner: str, ttl: int, now: int) -> bool:
        return bool(self._run("lease", [self._k(LEASE_KEY)], ["acquire", owner, max(ttl // 1000, 1)]))

    def release(self, owner: str) -> None:
        self._run("lease", [self._k(LEASE_KEY)], ["release", owner, 0])

    def leader(self, now: int) -> tuple[str, int] | None:
        with map_errors(self.where):
            owner, pttl = self.client.pipeline([("GET", self._k(LEASE_KEY)), ("PTTL", self._k(LEASE_KEY))],
                                               transaction=True)
        if owner is None or pttl is None or pttl < 0:
            return None
        return _text(owner), now + int(pttl) * 1000
