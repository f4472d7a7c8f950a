"""A doorbell between processes on one machine: Unix datagram sockets in a folder.

Waiters bind a socket in the folder; ``ring()`` sends one byte to each.  It turns
polling a SQLite file into push-like wake-ups; a missed ring only costs the
waiter's fallback timeout, so correctness never depends on it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import threading
import weakref


class Bell:
    def __init__(self, key: str, channel: str) -> None:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        self.dir = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"celeriac-bell-{digest}-{channel}")
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._pid = 0
        self._listing: list[str] = []
        self._mtime = -1.0
        self._sender: socket.socket | None = None

    def _ensure_dir(self) -> None:
        os.makedirs(self.dir, mode=0o777, exist_ok=True)

    def ring(self) -> None:
        try:
            mtime = os.stat(self.dir).st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._mtime = mtime
            self._listing = [os.path.join(self.dir, n) for n in os.listdir(self.dir)]
        if not self._listing:
            return
        if self._sender is None or self._pid != os.getpid():
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
            weakref.finalize(self, self._sender.close)
            self._pid = os.getpid()
        for path in self._listing:
            if path == self._path:
                continue
            try:
                self._sender.sendto(b"!", path)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    try:  # a dead waiter's socket
                        os.unlink(path)
                    except OSError:
                        pass

    def _receiver(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():
            self._ensure_dir()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = os.path.join(self.dir, f"{os.getpid()}-{threading.get_ident() % 100000}-{id(self) % 100000}")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            sock.bind(path)
            sock.setblocking(False)
            weakref.finalize(self, _close_and_unlink, sock, path, os.getpid())
            self._sock, self._path, self._pid = sock, path, os.getpid()
            self._sender = None
        return self._sock

    def arm(self) -> None:
        """Create the receiving socket now, so rings sent from here on are kept."""
        with self._lock:
            self._receiver()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ring; True if one came."""
        with self._lock:
            sock = self._receiver()
        if timeout > 0:
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                return False
        rang = False
        while True:
            try:
                sock.recv(64)
                rang = True
            except BlockingIOError:
                return rang
            except OSError:
                return rang

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
                if self._path:
                    try:
                        os.unlink(self._path)
                    except OSError:
                        pass
            self._sock = None
            self._path = None


def _close_and_unlink(sock: socket.socket, path: str, pid: int) -> None:
    sock.close()
    if os.getpid() == pid:
        try:
            os.unlink(path)
        except OSError:
            pass
