"""Dead letters and global rate-limit token buckets of the Redis broker (a mixin of
``RedisBroker``; keys are preceded by the ``global_keyprefix`` option)::

    celeriac.dead_letters        list (newest first, capped): JSON dead letters
    celeriac.bucket.<key>        hash {tokens, stamp}: global_rate_limit token buckets

Both are changed only by Lua scripts (``redis_bury.lua``, ``redis_replay.lua``,
``redis_tokens.lua``), run through the broker's ``_run``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..exceptions import DecodeError
from ..protocol.message import from_kombu_json, to_kombu_json
from .base import DeadLetter, Delivery

DEAD_LETTERS_KEY = "celeriac.dead_letters"
BUCKET_PREFIX = "celeriac.bucket."


class RedisDeadLetterMixin:
    if TYPE_CHECKING:
        client: Any

        def _k(self, name: str) -> str: ...
        def _run(self, script: str, args: Any) -> Any: ...
        def _errors(self) -> Any: ...
        def queue_key(self, queue: str, step: int = 0) -> str: ...
        def step_for(self, priority: int | None) -> int: ...

    # -- global rate limits ------------------------------------------------------
    def acquire_tokens(self, key: str, rate: float, burst: float = 1.0, n: float = 1.0) -> float:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        return float(self._run("tokens", [self._k(BUCKET_PREFIX + key), float(rate), float(burst), float(n)]))

    # -- dead letters ------------------------------------------------------------
    def _bury(self, tag: str, queue: str, raw: str, reason: str, headers: dict[str, Any]) -> None:
        entry = json.dumps({
            "dead_id": uuid.uuid4().hex, "reason": reason, "queue": queue,
            "task": headers.get("task"), "id": headers.get("id"), "failed_at": time.time(),
            "envelope": raw,
        })
        self._run("bury", [entry, tag])

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        info = delivery.envelope.properties.get("delivery_info")
        info = info if isinstance(info, dict) else {}
        raw = to_kombu_json(delivery.envelope, str(info.get("exchange") or ""),
                            str(info.get("routing_key") or delivery.queue), delivery.tag)
        self._bury(delivery.tag, delivery.queue, raw, reason, delivery.envelope.headers)

    @staticmethod
    def _parse_dead(value: bytes | str) -> DeadLetter | None:
        try:
            data = json.loads(value)
            return DeadLetter(str(data["dead_id"]), str(data.get("queue") or ""), str(data.get("reason") or ""),
                              str(data.get("envelope") or ""), float(data.get("failed_at") or 0.0),
                              data.get("task"), data.get("id"))
        except (ValueError, TypeError, KeyError):
            return None

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._errors():
            values = self.client.execute("LRANGE", self._k(DEAD_LETTERS_KEY), 0, limit - 1)
        return [dl for dl in map(self._parse_dead, values) if dl is not None]

    def replay_dead_letter(self, dead_id: str) -> bool:
        with self._errors():
            values = self.client.execute("LRANGE", self._k(DEAD_LETTERS_KEY), 0, -1)
        for value in values:
            dl = self._parse_dead(value)
            if dl is None or dl.id != dead_id:
                continue
            try:
                env = from_kombu_json(dl.raw)
                payload = to_kombu_json(env, "", dl.queue, str(uuid.uuid4()))
                key = self.queue_key(dl.queue, self.step_for(env.priority))
            except DecodeError:  # put the bytes back as they were
                payload, key = dl.raw, self.queue_key(dl.queue)
            return bool(self._run("replay", [value, dl.queue, key, payload]))
        return False
