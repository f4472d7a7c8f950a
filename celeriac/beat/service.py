"""Running the scheduler: ``celeriac beat`` (:class:`Beat`) and ``worker -B`` (:class:`EmbeddedBeat`)."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any

from .. import __version__, signals
from ..exceptions import ImproperlyConfigured
from .scheduler import Scheduler

logger = logging.getLogger("celeriac.beat")

#: scheduler paths that name ours (Celery's default included)
_OURS = frozenset({
    "celeriac.beat:Scheduler", "celeriac.beat.Scheduler", "celeriac.beat.scheduler:Scheduler",
    "celeriac.beat.scheduler.Scheduler", "celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler",
    "celery.beat:Scheduler", "celery.beat.Scheduler",
})
#: store-backed schedulers of other packages, which ours replaces
_FOREIGN = frozenset({
    "django_celery_beat.schedulers:DatabaseScheduler", "django_celery_beat.schedulers.DatabaseScheduler",
    "redbeat:RedBeatScheduler", "redbeat.RedBeatScheduler", "redbeat.schedulers:RedBeatScheduler",
    "redbeat.schedulers.RedBeatScheduler",
})


def resolve_scheduler(spec: Any) -> type[Scheduler]:
    """The scheduler class ``--scheduler`` / ``beat_scheduler`` names (a dotted path or a class)."""
    if spec is None or spec == "" or spec in _OURS:
        return Scheduler
    if isinstance(spec, str) and spec in _FOREIGN:
        logger.info("beat: %s belongs to another package; using celeriac.beat.Scheduler, whose entries "
                    "live in the broker's store (manage them with `celeriac schedule` or "
                    "celeriac.beat.ScheduleStore)", spec)
        return Scheduler
    cls: Any = spec
    if isinstance(spec, str):
        module, sep, attr = spec.partition(":")
        if not sep:
            module, _, attr = spec.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(f"Cannot import the beat scheduler {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ImproperlyConfigured(f"The beat scheduler {spec!r} is not a subclass of celeriac.beat.Scheduler")
    return cls


def _scheduler_name(cls: type) -> str:
    return f"{cls.__module__.replace('.scheduler', '')}.{cls.__qualname__}"


class Beat:
    """The ``celeriac beat`` service: banner, signals, the scheduler loop."""

    def __init__(self, app: Any, scheduler: Any = None, max_interval: float | None = None,
                 quiet: bool = False, loglevel: str = "WARNING", logfile: str | None = None,
                 **kwargs: Any) -> None:
        self.app = app
        self.scheduler_cls = resolve_scheduler(scheduler if scheduler is not None else app.conf.beat_scheduler)
        self.max_interval = max_interval
        self.quiet = quiet
        self.loglevel = loglevel
        self.logfile = logfile
        self.stop_event = threading.Event()
        self.scheduler: Scheduler | None = None

    def banner(self, sched: Scheduler, n_config: int, n_api: int) -> str:
        from ..worker.worker import _censor_url
        interval = sched.max_interval or sched.renew_interval
        return "\n".join([
            f"celeriac beat v{__version__} is starting.",
            f"LocalTime -> {datetime.now():%Y-%m-%d %H:%M:%S}",
            "Configuration ->",
            f"    . broker -> {_censor_url(self.app.broker_url)}",
            f"    . scheduler -> {_scheduler_name(type(sched))}",
            f"    . store -> {sched.store.describe()}",
            f"    . entries -> {n_config} from beat_schedule, {n_api} added at run time",
            f"    . logfile -> {self.logfile or '[stderr]'}@%{self.loglevel.upper()}",
            f"    . maxinterval -> {interval:.2f} seconds",
            f"    . lease -> {sched.lease_seconds:g} s (a standby takes over within "
            f"{sched.takeover_bound:.1f} s); missed ticks -> {sched.policy}",
            "",
        ])

    def _install_signals(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def run(self) -> int:
        sched = self.scheduler = self.scheduler_cls(self.app, max_interval=self.max_interval)
        try:
            entries = sched.setup()
            if not self.quiet:
                n_config = sum(1 for e in entries if e.source == "config")
                print(self.banner(sched, n_config, len(entries) - n_config), file=sys.stderr, flush=True)
            logger.info("beat: Starting...")
            self._install_signals()
            sched.run(self.stop_event)
            logger.info("beat: Shutting down")
        finally:
            sched.close()
            self.app.close()
        return 0

    def stop(self) -> None:
        self.stop_event.set()


class EmbeddedBeat:
    """The scheduler in a thread of another process (``celeriac worker -B``)."""

    def __init__(self, app: Any, scheduler: Any = None, **kwargs: Any) -> None:
        self.app = app
        self.scheduler_cls = resolve_scheduler(scheduler if scheduler is not None else app.conf.beat_scheduler)
        self.kwargs = kwargs
        self.scheduler: Scheduler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Sync the schedule (a bad entry raises here, naming it), then run the loop in a thread."""
        sched = self.scheduler = self.scheduler_cls(self.app, **self.kwargs)
        sched.setup()
        logger.info("beat: Starting (embedded in this process)...")
        # stop sending as soon as the worker begins to shut down, not after its pool drained
        signals.worker_shutting_down.connect(self._on_shutdown, dispatch_uid=("celeriac.beat", id(self)))
        self._thread = threading.Thread(target=self._run, name="Beat", daemon=True)
        self._thread.start()

    def _on_shutdown(self, **kwargs: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        assert self.scheduler is not None
        try:
            self.scheduler.run(self._stop)
        except Exception:
            logger.exception("beat: the embedded scheduler stopped on an error")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        signals.worker_shutting_down.disconnect(dispatch_uid=("celeriac.beat", id(self)))
        if self._thread is not None:
            self._thread.join(timeout)
        if self.scheduler is not None:
            self.scheduler.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
