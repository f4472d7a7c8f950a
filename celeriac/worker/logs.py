"""Celery-style logging for the worker, and print() redirected into it."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from .. import _state, signals

if TYPE_CHECKING:
    from ..app import Celery

WORKER_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
TASK_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"


class TaskFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        req = _state.current_task_request()
        record.__dict__.setdefault("task_name", getattr(req, "task", None) or "???")
        record.__dict__.setdefault("task_id", getattr(req, "id", None) or "???")
        return super().format(record)


def setup_logging(app: Celery, loglevel: str | int, logfile: str | None = None) -> None:
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if isinstance(level, str):
        raise ValueError(f"Unknown log level {loglevel!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    responses = signals.setup_logging.send(sender=None, loglevel=level, logfile=logfile,
                                           format=WORKER_FORMAT, colorize=False)
    if responses:
        return
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    conf = app.conf
    handler.setFormatter(logging.Formatter(conf.worker_log_format or WORKER_FORMAT))
    root = logging.getLogger()
    if conf.worker_hijack_root_logger is not False:
        for h in list(root.handlers):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    signals.after_setup_logger.send(sender=None, logger=root, loglevel=level, logfile=logfile,
                                    format=WORKER_FORMAT, colorize=False)
    task_logger = logging.getLogger("celery.task")
    task_handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    task_handler.setFormatter(TaskFormatter(conf.worker_task_log_format or TASK_FORMAT))
    task_logger.addHandler(task_handler)
    task_logger.propagate = False
    task_logger.setLevel(level)
    signals.after_setup_task_logger.send(sender=None, logger=task_logger, loglevel=level, logfile=logfile,
                                         format=TASK_FORMAT, colorize=False)


def get_task_logger(name: str) -> logging.Logger:
    """A logger whose lines carry the task name and id (``celery.task`` parent)."""
    logger = logging.getLogger(f"celery.task.{name}" if not name.startswith("celery.task") else name)
    return logger


class LoggingProxy:
    """A file-like object that writes lines to a logger (``print`` in tasks)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        self._buffer = ""

    def write(self, data: str) -> int:
        self._buffer += data
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.strip():
                self.logger.log(self.level, line)
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._buffer.strip():
            self.logger.log(self.level, self._buffer)
        self._buffer = ""

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


def redirect_stdouts(app: Celery) -> None:
    if app.conf.worker_redirect_stdouts is False:
        return
    level = logging.getLevelName(str(app.conf.worker_redirect_stdouts_level or "WARNING").upper())
    logger = logging.getLogger("celery.redirected")
    sys.stdout = LoggingProxy(logger, level if isinstance(level, int) else logging.WARNING)  # type: ignore[assignment]
