"""Process id and random UUIDs without a system call each time.

On the send path every system call counts (a few µs each on a virtual machine):
``os.getpid()`` is one, and so is ``uuid.uuid4()`` (``os.urandom(16)``).  Here the pid
is read once and again in a forked child (``os.register_at_fork``), and UUID4 strings
are cut from 4 KiB of ``os.urandom`` at a time: the same randomness as ``uuid4()``,
one ``getrandom`` call per 256 ids.  A child never reuses its parent's bytes.
"""

from __future__ import annotations

import os
import threading

_BATCH = 4096
_lock = threading.Lock()
_pid = os.getpid()
_buf = b""
_pos = _BATCH
_VERSION_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_SET = (0x4000 << 64) | (0x8000 << 48)


def getpid() -> int:
    """``os.getpid()``, cached (refreshed in forked children)."""
    return _pid


def uuid4() -> str:
    """``str(uuid.uuid4())``: 122 random bits from os.urandom, version 4, RFC 4122 variant."""
    global _buf, _pos
    with _lock:
        pos = _pos
        if pos >= _BATCH:
            _buf, pos = os.urandom(_BATCH), 0
        _pos = pos + 16
        n = int.from_bytes(_buf[pos:pos + 16], "big")
    h = "%032x" % ((n & _VERSION_CLEAR) | _VERSION_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _after_fork() -> None:
    global _pid, _buf, _pos, _lock
    _pid = os.getpid()
    _buf, _pos = b"", _BATCH
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
