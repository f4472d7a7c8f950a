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


_CHUNK = 256  # ids per os.urandom call in uuid4_many
_MASK = (1 << 128) - 1
_CLEAR_MANY = int.from_bytes((_VERSION_CLEAR & _MASK).to_bytes(16, "big") * _CHUNK, "big")
_SET_MANY = int.from_bytes(_VERSION_SET.to_bytes(16, "big") * _CHUNK, "big")


def uuid4_many(n: int) -> list[str]:
    """``n`` strings like ``uuid4()``'s (same randomness, version and variant), made a
    chunk at a time: one ``os.urandom`` call and one hex conversion per 256 ids or fewer.  Its
    bytes are its own (no shared buffer), so no lock is needed."""
    out: list[str] = []
    while len(out) < n:
        k = min(_CHUNK, n - len(out))
        drop = 128 * (_CHUNK - k)  # k copies of the masks
        h = ((int.from_bytes(os.urandom(16 * k), "big") & (_CLEAR_MANY >> drop)) | (_SET_MANY >> drop)) \
            .to_bytes(16 * k, "big").hex()
        out += [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
                for i in range(0, 32 * k, 32)]
    return out


def _after_fork() -> None:
    global _pid, _buf, _pos, _lock
    _pid = os.getpid()
    _buf, _pos = b"", _BATCH
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
