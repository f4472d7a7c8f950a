"""Celery's signals: ``@task_prerun.connect``, ``signal.connect(f, sender=...)``.

A receiver is called as ``receiver(signal=..., sender=..., **named)``.  A
receiver that raises is logged and does not stop the others (Celery's
``send``).  Senders are compared by identity or, for tasks, by name, so
``sender='proj.tasks.add'`` and ``sender=add`` both filter.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("celeriac.signals")


def _sender_key(sender: Any) -> Any:
    if sender is None:
        return None
    if isinstance(sender, str):
        return sender
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else id(sender)


class Signal:
    def __init__(self, name: str, providing_args: Any = None) -> None:
        self.name = name
        self._receivers: list[tuple[Any, Any, Any]] = []  # (uid, sender_key, ref or fn)
        self._lock = threading.Lock()

    def connect(self, *args: Any, sender: Any = None, weak: bool = False,
                dispatch_uid: Any = None, **kwargs: Any) -> Any:
        """Connect a receiver; works as ``sig.connect(f)``, ``@sig.connect`` and ``@sig.connect(sender=x)``."""
        if args and callable(args[0]):
            return self._connect(args[0], sender, weak, dispatch_uid)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            return self._connect(fn, sender, weak, dispatch_uid)

        return decorator

    def _connect(self, fn: Callable[..., Any], sender: Any, weak: bool, dispatch_uid: Any) -> Any:
        uid = dispatch_uid if dispatch_uid is not None else (id(fn), _sender_key(sender))
        ref: Any = fn
        if weak:
            ref = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else weakref.ref(fn)
        with self._lock:
            if not any(r[0] == uid for r in self._receivers):
                self._receivers.append((uid, _sender_key(sender), (weak, ref)))
        return fn

    def disconnect(self, receiver: Any = None, sender: Any = None, dispatch_uid: Any = None) -> bool:
        uid = dispatch_uid if dispatch_uid is not None else (id(receiver), _sender_key(sender))
        with self._lock:
            before = len(self._receivers)
            self._receivers = [r for r in self._receivers if r[0] != uid]
            return len(self._receivers) != before

    @property
    def receivers(self) -> list[Any]:
        """A copy of the connected receivers.  The package's hot paths test ``_receivers``
        itself (no copy) for "anything connected?"."""
        return list(self._receivers)

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._live(sender))

    def _live(self, sender: Any) -> list[Callable[..., Any]]:
        key = _sender_key(sender)
        out = []
        for _, skey, (weak, ref) in self._receivers:
            if skey is not None and skey != key:
                continue
            fn = ref() if weak else ref
            if fn is not None:
                out.append(fn)
        return out

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Any, Any]]:
        if not self._receivers:
            return []
        responses = []
        for fn in self._live(sender):
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                logger.exception("Signal handler %r raised: %r", fn, exc)
                responses.append((fn, exc))
        return responses

    send_robust = send

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_before_create_process = Signal("worker_before_create_process")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_shutting_down = Signal("worker_shutting_down")
heartbeat_sent = Signal("heartbeat_sent")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")
eventlet_pool_started = Signal("eventlet_pool_started")
user_preload_options = Signal("user_preload_options")
