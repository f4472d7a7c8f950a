"""Errors raised by celeriac, under Celery's public names.

::

    Exception
    ├── CeleryError                      (base of everything we raise)
    │   ├── ImproperlyConfigured         bad setting value, bad URL, missing module
    │   ├── OperationalError             broker or backend unreachable
    │   ├── SecurityError                refused content type, non-exception in result
    │   ├── DecodeError                  a message that cannot be decoded
    │   ├── BackendDisabled              no result backend configured (also NotImplementedError)
    │   ├── NotRegistered (KeyError)     unknown task name
    │   ├── AlreadyRegistered
    │   ├── TimeoutError                 AsyncResult.get() timed out
    │   ├── MaxRetriesExceededError
    │   ├── TaskRevokedError
    │   ├── InvalidTaskError
    │   ├── ChordError
    │   ├── QueueNotFound (KeyError)
    │   └── IncompleteStream
    ├── TaskPredicate                    control flow inside a task, not failures
    │   ├── Retry                        raised by Task.retry()
    │   ├── Ignore                       do not record a state
    │   └── Reject                       reject the message (requeue or dead-letter)
    ├── SoftTimeLimitExceeded            raised inside a task at its soft limit
    ├── TimeLimitExceeded                the process running a task was killed
    ├── WorkerLostError                  the process running a task died
    ├── Terminated                       the task was terminated by revoke(terminate=True)
    └── ContentDisallowed (SecurityError)
"""

from __future__ import annotations

import numbers
from datetime import datetime
from typing import Any


class CeleryError(Exception):
    """Base class of every error celeriac raises."""


class ImproperlyConfigured(CeleryError, ValueError):
    """A setting, URL or command-line value is wrong."""


class OperationalError(CeleryError):
    """The broker or the result backend cannot be reached."""


class SecurityError(CeleryError):
    """A message or result was refused for safety reasons."""


class ContentDisallowed(SecurityError):
    """A message used a serializer that is not in ``accept_content``."""


class BackendDisabled(NotImplementedError, CeleryError):
    """No result backend is configured (a NotImplementedError, as Celery raises)."""


class DecodeError(CeleryError):
    """A message could not be decoded."""


class NotRegistered(KeyError, CeleryError):
    """The task name is not registered with the worker."""

    def __repr__(self) -> str:
        return f"NotRegistered({self.args[0]!r})" if self.args else "NotRegistered()"

    def __str__(self) -> str:
        name = self.args[0] if self.args else "?"
        return f"Task of kind {name!r} never registered, please make sure it's imported."


class AlreadyRegistered(CeleryError):
    """The task name is already registered."""


class TimeoutError(CeleryError):  # noqa: A001 - Celery's public name
    """``AsyncResult.get()`` waited longer than its timeout."""


class MaxRetriesExceededError(CeleryError):
    """The task retried ``max_retries`` times and failed again."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        super().__init__(*args)
        self.task_args = task_args
        self.task_kwargs = task_kwargs


class TaskRevokedError(CeleryError):
    """The task was revoked (or expired) before it could finish."""


class InvalidTaskError(CeleryError):
    """The task message is malformed."""


class ChordError(CeleryError):
    """A member of a chord's header failed."""


class QueueNotFound(KeyError, CeleryError):
    """A queue named on the command line is not defined in ``task_queues``."""


class IncompleteStream(CeleryError):
    """A message body ended early."""


class BackendError(CeleryError):
    """The result backend failed."""


class BackendGetMetaError(BackendError):
    """Reading a result failed."""


class BackendStoreError(BackendError):
    """Storing a result failed."""


class TaskPredicate(CeleryError):
    """Base of the control-flow exceptions raised inside tasks."""


class Retry(TaskPredicate):
    """The task is to be retried (raised by ``Task.retry``)."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | str | None = None,
        when: numbers.Real | datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.excs = str(exc) if isinstance(exc, str) else (repr(exc) if exc is not None else None)
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(self, exc, when, **kwargs)

    def humanize(self) -> str:
        if isinstance(self.when, numbers.Number):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.excs:
            return f"Retry {self.humanize()}: {self.excs}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """The worker records no state for this task."""


class Reject(TaskPredicate):
    """The message is rejected: requeued, or dead-lettered when ``requeue`` is false."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit is reached."""

    def __str__(self) -> str:
        return "SoftTimeLimitExceeded" + (f"({self.args[0]})" if self.args else "()")


class TimeLimitExceeded(Exception):
    """The task hit its hard time limit and the process running it was replaced."""

    def __str__(self) -> str:
        return f"TimeLimitExceeded{self.args!r}"


class WorkerLostError(Exception):
    """The process running the task exited unexpectedly."""


class Terminated(Exception):
    """The task was terminated by ``revoke(terminate=True)``."""


class WorkerShutdown(SystemExit):
    """Raised to make the worker shut down warmly."""


class WorkerTerminate(SystemExit):
    """Raised to make the worker shut down cold."""


CDeprecationWarning = DeprecationWarning
CPendingDeprecationWarning = PendingDeprecationWarning


class AlwaysEagerIgnored(UserWarning):
    """``send_task`` ignores ``task_always_eager``."""


__all__ = [name for name in list(globals()) if not name.startswith("_") and name[0].isupper()]
