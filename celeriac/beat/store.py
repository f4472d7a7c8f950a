"""Where beat keeps its entries and its leader lease: the broker's own store.

:class:`BeatStore` is the small interface the scheduler uses; SQLite
(:mod:`.store_sqlite`), Redis (:mod:`.store_redis`) and the in-process memory
store below implement it.  Every method that changes a tick is a
compare-and-set, atomic in the store, so two schedulers can never both win the
same tick.  All times are integer microseconds since the epoch.

Definitions:

* ``sync_config(entries)``: make the ``source='config'`` rows equal to the
  config file's entries (insert new ones, update changed ones, delete config
  rows no longer in the file).  Rows added through the API are left alone.
  A row keeps its ``next_run`` and ``enabled`` unless its schedule changed.
* ``put(entry, replace)``: add one entry, or replace its definition (keeping
  its ``source`` and ``enabled``).  A new entry, or one whose schedule
  changed, takes ``entry.next_run``.

Ticks:

* ``claim(name, expected, new_next, tick, owner, now)``: if the entry is
  enabled, ``next_run == expected`` and no tick is pending, set
  ``next_run = new_next``, ``last_run = tick``, count the run and record
  ``tick`` as pending for ``owner``.  True for the one winner.
* ``advance(name, expected, new_next)``: the same compare-and-set without a
  send (the ``skip`` policy).
* ``confirm(name, tick)``: the pending tick was sent.
* ``take_pending(name, tick, old_owner, owner, now)``: adopt a pending tick
  whose sender died, to send it again.

Lease: ``acquire(owner, ttl, now)`` takes the lease if it is free or expired,
or renews it if ``owner`` holds it; ``release(owner)``; ``leader(now)``.
"""

from __future__ import annotations

import abc
import copy
import threading
from collections.abc import Sequence
from typing import Any

from .._sqlite import sqlite_path
from ..exceptions import ImproperlyConfigured
from .entries import Entry, canonical_json

LEASE_NAME = "beat"


class BeatStore(abc.ABC):
    """Entries and the leader lease, shared by every scheduler on one broker."""

    def describe(self) -> str:
        return type(self).__name__

    # -- definitions -------------------------------------------------------------
    @abc.abstractmethod
    def sync_config(self, entries: Sequence[Entry]) -> None: ...

    @abc.abstractmethod
    def put(self, entry: Entry, replace: bool = False) -> bool:
        """Add ``entry`` (False if the name exists and not ``replace``)."""

    @abc.abstractmethod
    def delete(self, name: str) -> bool: ...

    @abc.abstractmethod
    def set_enabled(self, name: str, enabled: bool, next_run: int) -> bool:
        """Enable (a disabled entry restarts from ``next_run``) or disable; False if no such entry."""

    @abc.abstractmethod
    def get(self, name: str) -> Entry | None: ...

    @abc.abstractmethod
    def entries(self) -> list[Entry]:
        """Every entry, by name."""

    @abc.abstractmethod
    def due(self, now: int) -> list[Entry]:
        """Enabled entries with ``next_run <= now``, earliest first."""

    @abc.abstractmethod
    def next_due(self) -> int | None:
        """The earliest ``next_run`` of the enabled entries."""

    # -- ticks -----------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, name: str, expected: int, new_next: int, tick: int, owner: str, now: int) -> bool: ...

    @abc.abstractmethod
    def advance(self, name: str, expected: int, new_next: int) -> bool: ...

    @abc.abstractmethod
    def confirm(self, name: str, tick: int) -> None: ...

    @abc.abstractmethod
    def pending(self) -> list[Entry]:
        """Entries with a claimed tick whose send is not confirmed."""

    @abc.abstractmethod
    def take_pending(self, name: str, tick: int, old_owner: str, owner: str, now: int) -> bool: ...

    # -- leader lease ------------------------------------------------------------
    @abc.abstractmethod
    def acquire(self, owner: str, ttl: int, now: int) -> bool: ...

    @abc.abstractmethod
    def release(self, owner: str) -> None: ...

    @abc.abstractmethod
    def leader(self, now: int) -> tuple[str, int] | None:
        """``(owner, expires)`` of a live lease, or None."""

    def close(self) -> None:  # noqa: B027 - optional: stores without connections keep this
        """Release connections."""


# -- in-process store (memory:// brokers) ------------------------------------------


class MemoryBeatStore(BeatStore):
    """The reference implementation: a dict under a lock, shared per ``memory://`` URL."""

    _shared: dict[str, tuple[threading.Lock, dict[str, Entry], dict[str, Any]]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, url: str = "memory://") -> None:
        with self._shared_lock:
            self._lock, self._rows, self._lease = self._shared.setdefault(url, (threading.Lock(), {}, {}))

    def describe(self) -> str:
        return "memory (this process only)"

    def sync_config(self, entries: Sequence[Entry]) -> None:
        with self._lock:
            names = {e.name for e in entries}
            for name in [n for n, r in self._rows.items() if r.source == "config" and n not in names]:
                del self._rows[name]
            for e in entries:
                self._upsert(e, "config")

    def _upsert(self, e: Entry, source: str | None) -> None:
        """Insert ``e``, or update the definition of its row (``source`` None keeps the row's)."""
        row = self._rows.get(e.name)
        if row is None:
            row = self._rows[e.name] = copy.deepcopy(e)
            row.source = source or e.source
            return
        if canonical_json(row.schedule_dict) != canonical_json(e.schedule_dict):
            row.schedule_dict, row.next_run = copy.deepcopy(e.schedule_dict), e.next_run
        row.task, row.args, row.kwargs = e.task, copy.deepcopy(e.args), copy.deepcopy(e.kwargs)
        row.options, row.source = copy.deepcopy(e.options), source or row.source

    def put(self, entry: Entry, replace: bool = False) -> bool:
        with self._lock:
            if entry.name in self._rows and not replace:
                return False
            self._upsert(entry, None)
            return True

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._rows.pop(name, None) is not None

    def set_enabled(self, name: str, enabled: bool, next_run: int) -> bool:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                return False
            if enabled and not row.enabled:
                row.next_run = next_run
            row.enabled = enabled
            return True

    def get(self, name: str) -> Entry | None:
        with self._lock:
            row = self._rows.get(name)
            return None if row is None else copy.deepcopy(row)

    def entries(self) -> list[Entry]:
        with self._lock:
            return [copy.deepcopy(self._rows[n]) for n in sorted(self._rows)]

    def due(self, now: int) -> list[Entry]:
        with self._lock:
            rows = [copy.deepcopy(r) for r in self._rows.values() if r.enabled and r.next_run <= now]
        return sorted(rows, key=lambda r: (r.next_run, r.name))

    def next_due(self) -> int | None:
        with self._lock:
            runs = [r.next_run for r in self._rows.values() if r.enabled]
        return min(runs) if runs else None

    def _casable(self, name: str, expected: int) -> Entry | None:
        row = self._rows.get(name)
        if row is None or not row.enabled or row.next_run != expected or row.pending_tick is not None:
            return None
        return row

    def claim(self, name: str, expected: int, new_next: int, tick: int, owner: str, now: int) -> bool:
        with self._lock:
            row = self._casable(name, expected)
            if row is None:
                return False
            row.next_run, row.last_run = new_next, tick
            row.total_run_count += 1
            row.pending_tick, row.pending_owner, row.pending_since = tick, owner, now
            return True

    def advance(self, name: str, expected: int, new_next: int) -> bool:
        with self._lock:
            row = self._casable(name, expected)
            if row is None:
                return False
            row.next_run = new_next
            return True

    def confirm(self, name: str, tick: int) -> None:
        with self._lock:
            row = self._rows.get(name)
            if row is not None and row.pending_tick == tick:
                row.pending_tick = row.pending_owner = row.pending_since = None

    def pending(self) -> list[Entry]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._rows.values() if r.pending_tick is not None]

    def take_pending(self, name: str, tick: int, old_owner: str, owner: str, now: int) -> bool:
        with self._lock:
            row = self._rows.get(name)
            if row is None or row.pending_tick != tick or row.pending_owner != old_owner:
                return False
            row.pending_owner, row.pending_since = owner, now
            return True

    def acquire(self, owner: str, ttl: int, now: int) -> bool:
        with self._lock:
            if self._lease.get("owner") not in (None, owner) and self._lease["expires"] >= now:
                return False
            self._lease.update(owner=owner, expires=now + ttl)
            return True

    def release(self, owner: str) -> None:
        with self._lock:
            if self._lease.get("owner") == owner:
                self._lease.clear()

    def leader(self, now: int) -> tuple[str, int] | None:
        with self._lock:
            if self._lease.get("owner") and self._lease["expires"] >= now:
                return self._lease["owner"], self._lease["expires"]
            return None


def store_for_url(url: str, transport_options: dict[str, Any] | None = None) -> BeatStore:
    """The beat store that lives beside the broker at ``url``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("sqlite", "sqla+sqlite", "db+sqlite"):
        from .store_sqlite import SQLiteBeatStore
        return SQLiteBeatStore(sqlite_path(url))
    if scheme in ("redis", "rediss", "unix", "sentinel", "redis+socket"):
        try:
            from .store_redis import RedisBeatStore
        except ImportError as exc:
            raise ImproperlyConfigured(f"beat on {url!r} needs the Redis beat store: {exc}") from exc
        return RedisBeatStore(url, dict(transport_options or {}))
    if scheme == "memory":
        return MemoryBeatStore(url)
    raise ImproperlyConfigured(f"beat cannot keep its schedule on the broker {url!r} "
                               "(supported: sqlite://, redis://, memory://)")


def store_for_app(app: Any) -> BeatStore:
    return store_for_url(app.broker_url, app.conf.broker_transport_options)
