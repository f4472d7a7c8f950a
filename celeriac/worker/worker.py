"""The worker process: banner, logging, pool, signals, warm and cold shutdown.

Pools: ``prefork`` (default; children fetch for themselves under a supervisor),
``threads`` (one work loop per thread), ``solo`` (one loop in this process).
Soft time limits need a process's main thread: prefork and solo enforce them;
threads cannot interrupt a running thread.  Prefork enforces the hard limit by
replacing the process, solo by raising TimeLimitExceeded in the task
(see worker/timelimits.py and docs/time-limits.md).
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import __version__, signals
from .logs import redirect_stdouts, setup_logging
from .loop import WorkLoop
from .ratelimit import RateLimits
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.worker")
POOLS = ("prefork", "threads", "solo", "processes", "thread", "asyncio")


def expand_hostname(name: str | None) -> str:
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    name = name or "celeriac@%h"
    if "@" not in name:
        name = f"{name}@%h"
    return name.replace("%h", host).replace("%n", short).replace("%d", domain).replace("%%", "%")


def _censor_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user + ':**@' if user else ''}{host}"
    return url


class Worker:
    def __init__(self, app: Celery, *, hostname: str | None = None, queues: Sequence[str] | None = None,
                 concurrency: int | None = None, pool: str | None = None, loglevel: str = "WARNING",
                 logfile: str | None = None, prefetch_multiplier: int | None = None,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None,
                 autoscale: tuple[int, int] | None = None, beat: bool = False, quiet: bool = False,
                 events: bool = False, optimization: str | None = None, **kwargs: Any) -> None:
        self.app = app
        conf = app.conf
        self.hostname = expand_hostname(hostname)
        self.queues = list(queues) if queues else [conf.task_default_queue]
        pool = pool or conf.worker_pool or "prefork"
        self.pool = {"processes": "prefork", "thread": "threads"}.get(pool, pool)
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        if self.pool == "solo":
            self.concurrency = 1
        self.loglevel = loglevel
        self.logfile = logfile
        self.prefetch = prefetch_multiplier if prefetch_multiplier is not None else conf.worker_prefetch_multiplier
        if optimization == "fair":
            self.prefetch = 1
        self.max_tasks = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory = max_memory_per_child or conf.worker_max_memory_per_child
        self.autoscale = autoscale
        self.embed_beat = beat
        self.quiet = quiet
        self.events = bool(events or conf.worker_send_task_events)  # task events (-E)
        self.event_sender: Any = None  # events/worker.py WorkerEvents, once started
        self.id = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._cold = False
        self._signals_seen = 0
        self.loops: list[WorkLoop] = []
        self.supervisor: Supervisor | None = None
        self.started_at = time.time()
        self.extra = kwargs

    # -- banner ----------------------------------------------------------------
    def banner(self) -> str:
        app = self.app
        tasks = sorted(n for n in app.tasks if not n.startswith("celery."))
        results = app.conf.result_backend or (app.broker_url if app.broker_url.startswith(("sqlite", "memory"))
                                              else "disabled://")
        lines = [
            f" -------------- {self.hostname} v{__version__} (celeriac)",
            "--- ***** ----- ",
            f"-- ******* ---- {platform.platform()} {datetime.now():%Y-%m-%d %H:%M:%S}",
            "- *** --- * --- ",
            "- ** ---------- [config]",
            f"- ** ---------- .> app:         {app.main or '__main__'}:{id(app):#x}",
            f"- ** ---------- .> transport:   {_censor_url(app.broker_url)}",
            f"- ** ---------- .> results:     {_censor_url(results)}",
            f"- *** --- * --- .> concurrency: {self.concurrency} ({self.pool})",
            f"-- ******* ---- .> task events: {'ON' if self.events else 'OFF (enable -E to monitor tasks in this worker)'}",
            "--- ***** ----- ",
            " -------------- [queues]",
        ]
        for q in self.queues:
            lines.append(f"                .> {q:<16} exchange={q}(direct) key={q}")
        lines += ["", "[tasks]"] + [f"  . {t}" for t in tasks] + [""]
        return "\n".join(lines)

    # -- running ---------------------------------------------------------------
    def _install_signals(self) -> None:
        def warm_or_cold(signum: int, frame: Any) -> None:
            self._signals_seen += 1
            if self._signals_seen == 1 and signum != signal.SIGQUIT:
                print("\nworker: Warm shutdown (MainProcess)", file=sys.stderr, flush=True)
                self.stop(cold=False)
            else:
                print("\nworker: Cold shutdown (MainProcess)", file=sys.stderr, flush=True)
                self.stop(cold=True)
                if self.pool == "solo":
                    raise SystemExit(1)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, warm_or_cold)

    def stop(self, cold: bool = False) -> None:
        self._cold = self._cold or cold
        self._stop.set()
        signals.worker_shutting_down.send(sender=self.hostname, sig="SIGTERM", how="Cold" if cold else "Warm",
                                          exitcode=0)
        for loop in self.loops:
            if self.pool == "asyncio":
                loop.stop(cold=self._cold)  # type: ignore[call-arg]
            else:
                loop.stop()
        if self.supervisor is not None:
            self.supervisor.stop(cold=cold)

    def start(self) -> int:
        app = self.app
        signals.celeryd_init.send(sender=self.hostname, instance=self, conf=app.conf, options={})
        setup_logging(app, self.loglevel, self.logfile)
        app.finalize()
        app.broker.connect()
        app.backend.connect()
        for q in self.queues:
            app.broker.declare_queue(q)
        signals.worker_init.send(sender=self)
        if not self.quiet:
            print(self.banner(), file=sys.stderr, flush=True)
        signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=app.conf)
        self._install_signals()
        self._setup_events()  # before the pool forks: the children share its switch
        beat_thread = self._start_beat() if self.embed_beat else None
        try:
            if self.pool == "prefork":
                self._run_prefork()
            elif self.pool == "asyncio":
                self._run_asyncio()
            else:
                self._run_in_process()
        finally:
            if beat_thread is not None:
                beat_thread.stop()  # type: ignore[attr-defined]
            if self.event_sender is not None:
                self.event_sender.stop()  # this process's task events, then worker-offline
            signals.worker_shutdown.send(sender=self)
            app.close()
        return 0

    def _ready(self) -> None:
        logger.warning("%s ready.", self.hostname)
        if self.event_sender is not None:
            self.event_sender.start()  # worker-online, then a heartbeat every 2 s
        signals.worker_ready.send(sender=self)

    # -- events (celeriac/events; the control commands call these) ---------------
    def _setup_events(self) -> None:
        from ..events.worker import WorkerEvents
        self.event_sender = WorkerEvents(self)

    def send_heartbeat(self) -> None:
        if self.event_sender is not None:
            self.event_sender.heartbeat_now()

    def enable_events(self) -> None:
        if self.event_sender is not None:
            self.event_sender.enable()
        self.events = True

    def disable_events(self) -> None:
        if self.event_sender is not None:
            self.event_sender.disable()
        self.events = False

    def _run_prefork(self) -> None:
        sup = self.supervisor = Supervisor(
            self.app, self.queues, self.concurrency, self.hostname, self.prefetch,
            max_tasks_per_child=self.max_tasks, max_memory_per_child=self.max_memory,
            autoscale=self.autoscale)
        sup.start()
        self._start_control()
        self._ready()
        while not self._stop.is_set():
            sup.tick()
            self._stop.wait(0.1)
        sup.join()

    def _run_in_process(self) -> None:
        redirect_stdouts(self.app)
        n = 1 if self.pool == "solo" else self.concurrency
        rate_limits = RateLimits(self.app)  # one bucket per task for the whole worker
        for i in range(n):
            cid = f"{self.hostname}/{self.id}/{i + 1}"
            self.loops.append(WorkLoop(self.app, self.queues, cid, self.hostname, self.prefetch,
                                       max_tasks=None, in_main_thread=self.pool == "solo",
                                       rate_limits=rate_limits))
        self._start_control()
        self._ready()
        if self.pool == "solo":
            try:
                self.loops[0].run()
            except SystemExit:
                pass
            return
        threads = [threading.Thread(target=loop.run, name=f"ThreadPoolExecutor-{i}", daemon=True)
                   for i, loop in enumerate(self.loops)]
        for t in threads:
            t.start()
        while not self._stop.is_set():
            self._stop.wait(0.2)
        deadline = None if not self._cold else time.monotonic() + 1.0
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        # cold: give back what the loops held; warm: they settled everything, but a publisher
        # may have handed a loop a message after its last fetch (Redis hand-off): give it back
        for loop in self.loops:
            try:
                self.app.broker.release_consumer(loop.consumer.consumer_id)
            except Exception as exc:
                if self._cold:
                    raise
                logger.warning("Could not release consumer %s at shutdown: %r", loop.consumer.consumer_id, exc)

    def _run_asyncio(self) -> None:
        from .aio import AsyncWorkLoop
        redirect_stdouts(self.app)
        loop = AsyncWorkLoop(self.app, self.queues, f"{self.hostname}/{self.id}/a", self.hostname,
                             self.concurrency)
        self.loops.append(loop)  # type: ignore[arg-type]
        self._start_control()
        self._ready()
        loop.run()

    def _start_control(self) -> None:
        try:
            from ..control.server import start_control_server  # type: ignore[import-not-found]
        except ImportError:
            return
        start_control_server(self)

    def _start_beat(self) -> Any:
        from ..beat import EmbeddedBeat  # type: ignore[attr-defined]
        beat = EmbeddedBeat(self.app)
        beat.start()
        return beat
