"""A single publish on Redis as pre-packed commands (``RedisBroker.publish``), and what a
consumer's BRPOP returns when a publisher handed it a message (``redis_publish.lua``).

The hand-off: an idle consumer (its fetch found nothing; it now blocks on its wake list)
is registered in ``celeriac.idle.<Q>`` until shortly after its block ends.  A publish to
Q that finds one leases the message to it, exactly as its fetch would have, and pushes it
on its wake list: its BRPOP returns the message itself, which saves the doorbell wake-up
and the fetch script's round trip (two process wake-ups) on a lone task's way.  Messages
from other producers (a Celery client's plain LPUSH) are fetched as before, and a Celery
worker sees the handed message where it sees ours: leased, in kombu's unacked hash.
Not handed either: a publish within ``HANDOFF_GAP`` of the previous one (a burst: plain
LPUSH and ring, cheaper for Redis), while the doorbell holds a token (earlier messages wait), bulk
sends; and consumers of several queues never register.

Cost: a consumer killed while registered idle (no release by its supervisor) is handed
at most one message, which is given back when its lease lapses (as for any message a dead
consumer holds).  A consumer that is released (stopped, or its supervisor saw it die) is
taken off the idle set first and what it was handed goes back with its other leases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._resp import pack

# sent with every publish (EVAL): without its comment lines and indentation, so that
# Redis hashes (SHA1, to find its compiled form) a few hundred bytes, not two thousand
PUBLISH_SCRIPT = "\n".join(
    line.strip() for line in (Path(__file__).parent / "redis_publish.lua").read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.strip().startswith("--"))

# A publish sent again after its connection broke with the reply unread: Redis may have run
# it.  Pushed unless the message is in its list (LPUSH puts new ones first: LPOS finds a recent
# one early) or leased (kombu's unacked hash has its tag: this covers a hand-off too).  One
# acked in between would be pushed again: that needs a consumer to finish it within the
# moment the connection broke.  The doorbell is rung in either case: a plain publish is LPUSH then
# ring, not a transaction, so the connection may have broken between the two.
RESEND_SCRIPT = """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
local found = redis.call('LPOS', KEYS[1], ARGV[1], 'MAXLEN', 100000)
if not found then redis.call('LPUSH', KEYS[1], ARGV[1]) end
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
return found and 0 or 1
"""


def publish_forms(b: Any, queue: str, step: int, exchange: str, keys: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    """A publish to ``queue``'s priority ``step``, packed up to its last arguments:
    (EVAL of the hand-off script, to be followed by the tag and the envelope;
    the plain LPUSH, to be followed by the envelope and then the third: the doorbell).
    The plain form is no MULTI: a consumer that takes the message between the LPUSH and the
    ring (it cannot miss it: its fetch looks at the list) at worst wakes once for nothing."""
    qkey = b.queue_key(queue, step)
    bell = keys["bell"] + queue
    args = pack("EVAL", PUBLISH_SCRIPT, 8, qkey, bell, keys["idle"] + queue, b.unacked_key,
                b.unacked_index_key, keys["leases"], keys["lease"], keys["idle_of"], queue,
                f", {json.dumps(exchange)}, {json.dumps(queue)}]", keys["consumer"], keys["wake"],
                b.lease_seconds, "", "")
    return (args[:-12],  # without the two placeholders ("$0\r\n\r\n" each), still counted in "*N"
            b"*3\r\n$5\r\nLPUSH\r\n" + pack(qkey)[4:],
            pack("LPUSH", bell, "1") + pack("LTRIM", bell, 0, 0))


def handed(value: bytes) -> tuple[str, str, bytes] | None:
    """(tag, queue, envelope) of a wake-list item pushed by a hand-off, else None (a token)."""
    if value[:1] != b"h":
        return None
    tag, queue, raw = value[1:].split(b"\n", 2)
    return tag.decode("utf-8", "replace"), queue.decode("utf-8", "replace"), raw
