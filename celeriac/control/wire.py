"""Remote control messages: Celery's pidbox request and reply bodies (celery-wire.md 5.2-5.3).

A request body is a JSON object ``{method, arguments, destination, pattern,
matcher}`` plus ``ticket`` and ``reply_to`` when replies are wanted; a reply body
is ``{<nodename>: <value>}``.  Brokers carry these bytes over their broadcast
and reply primitives (on Redis wrapped in kombu envelopes, see
``brokers/redis_pidbox.py``).
"""

from __future__ import annotations

import fnmatch
import json
import re
import signal as _signal
from typing import Any

REVOKE_EXPIRES = 10800.0  # seconds a revoked id is remembered (Celery's default)


def exchange_names(control_exchange: str) -> tuple[str, str]:
    """(broadcast channel, reply exchange): ``celery.pidbox``, ``reply.celery.pidbox``."""
    return f"{control_exchange}.pidbox", f"reply.{control_exchange}.pidbox"


def reply_queue(routing_key: str, reply_exchange: str) -> str:
    """The reply queue kombu names ``<oid>.reply.celery.pidbox``."""
    return f"{routing_key}.{reply_exchange}"


def request_body(method: str, arguments: dict[str, Any] | None = None,
                 destination: list[str] | None = None, pattern: str | None = None,
                 matcher: str | None = None, ticket: str | None = None,
                 reply_to: dict[str, str] | None = None) -> bytes:
    body: dict[str, Any] = {"method": method, "arguments": arguments or {}, "destination": destination,
                            "pattern": pattern, "matcher": matcher}
    if ticket is not None:
        body["ticket"] = ticket
        body["reply_to"] = reply_to
    return json.dumps(body).encode()


def parse_request(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and isinstance(body.get("method"), str) else None


def matches(request: dict[str, Any], hostname: str) -> bool:
    """Celery's rule: no destination and no pattern = everyone; else the name or the pattern."""
    destination = request.get("destination")
    pattern = request.get("pattern")
    if isinstance(destination, str):
        destination = [destination]
    if destination:
        return hostname in destination
    if pattern:
        matcher = request.get("matcher") or "glob"
        if matcher == "pcre":
            return re.search(pattern, hostname) is not None
        return fnmatch.fnmatchcase(hostname, pattern)
    return True


def reply_body(hostname: str, value: Any) -> bytes:
    return json.dumps({hostname: value}, default=repr).encode()


def signum(sig: str | int | None) -> int:
    """``'SIGKILL'``, ``'KILL'``, ``9`` -> 9; ValueError naming the bad value otherwise."""
    if sig is None or sig == "":
        return int(_signal.SIGTERM)
    if isinstance(sig, int):
        if sig <= 0 or sig >= _signal.NSIG:
            raise ValueError(f"Invalid signal number: {sig!r}")
        return sig
    text = str(sig).strip()
    if text.isdigit():
        return signum(int(text))
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    value = getattr(_signal, name, None)
    if not isinstance(value, int) or name.startswith("SIG_"):
        raise ValueError(f"Unknown signal name: {sig!r} (use e.g. 'SIGTERM', 'SIGKILL', 'SIGUSR1')")
    return int(value)
