"""Task states, with Celery's names and precedence.

A state is a plain string. ``READY_STATES`` are final; ``PROPAGATE_STATES`` make
``AsyncResult.get()`` raise.  ``precedence`` orders states so that a late, lower
state never overwrites a higher one (a STARTED written after SUCCESS is ignored).
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED, IGNORED})

# Celery's PRECEDENCE list: earlier is "more final".  Custom states sort between
# RETRY and RECEIVED (as in Celery: unknown states have the precedence of None).
PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_LOOKUP = {state: i for i, state in enumerate(PRECEDENCE)}


def precedence(state: str | None) -> int:
    """Index of ``state`` in PRECEDENCE (lower = more final); custom states rank as None."""
    try:
        return _LOOKUP[state]
    except KeyError:
        return _LOOKUP[None]


class state(str):
    """A string that compares by precedence (``state('SUCCESS') > state('PENDING')``)."""

    def __gt__(self, other: object) -> bool:
        return precedence(self) < precedence(str(other))

    def __ge__(self, other: object) -> bool:
        return precedence(self) <= precedence(str(other))

    def __lt__(self, other: object) -> bool:
        return precedence(self) > precedence(str(other))

    def __le__(self, other: object) -> bool:
        return precedence(self) >= precedence(str(other))
