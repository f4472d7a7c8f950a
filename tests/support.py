"""Helpers for tests that run real worker processes through the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", *args], cwd=tmp_path,
                          env=env_for(tmp_path, **env), capture_output=True, text=True, timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class WorkerProcess:
    """``celeriac -A <app> worker ...`` as a subprocess, its log in a file."""

    def __init__(self, tmp_path: Path, app: str, *args: str, app_before: bool = True,
                 ready: bool = True, **env: str) -> None:
        self.log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "celeriac.cli.main"]
        cmd += ["-A", app, "worker", *args] if app_before else ["worker", "-A", app, *args]
        self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path, **env),
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if ready:
            wait_for(lambda: "ready." in self.log() or self.proc.poll() is not None, 60, message="worker ready")
            if self.proc.poll() is not None:
                self._log.close()
                raise AssertionError(f"worker exited early ({self.proc.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL the whole process group (main process and children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.stop()
        else:
            self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A throw-away redis-server, so that command counts are ours alone."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.start()

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.raw = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.raw.ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def calls(self) -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in self.raw.info("commandstats").items()}

    def kill(self) -> None:
        self.raw.close()
        self.proc.kill()
        self.proc.wait()


def stop_group(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM a process started in its own group, SIGKILL the group if it outstays ``timeout``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def delete_prefixed(r: Any, prefix: str) -> None:
    """Delete every key under a test's own key prefix (never FLUSHDB: the server is shared)."""
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)
