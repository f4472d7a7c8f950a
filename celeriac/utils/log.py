"""``from celeriac.utils.log import get_task_logger`` (Celery's ``celery.utils.log``).

A task logger's lines carry the task's name and id in the worker log::

    logger = get_task_logger(__name__)

    @app.task
    def add(x, y):
        logger.info("Adding %s + %s", x, y)
        # [...: INFO/ForkPoolWorker-1] proj.tasks.add[5d3c...]: Adding 2 + 3
"""

from __future__ import annotations

import logging

from ..worker.logs import LoggingProxy, get_task_logger

__all__ = ["LoggingProxy", "get_logger", "get_task_logger", "task_logger", "worker_logger"]


def get_logger(name: str | logging.Logger) -> logging.Logger:
    """A plain logger by name (Celery's ``get_logger``)."""
    return name if isinstance(name, logging.Logger) else logging.getLogger(name)


task_logger = logging.getLogger("celery.task")
worker_logger = logging.getLogger("celery.worker")
