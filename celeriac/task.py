"""Tasks: ``@app.task`` functions and ``Task`` subclasses.

A task object is an instance of :class:`Task` (or the ``base=`` class).  Calling
it runs the function here; ``delay``/``apply_async`` send a message; ``apply``
runs it here through the same execution path a worker uses.  Tasks are generic
over their parameters, so ``add.delay(1, "x")`` is a type error when ``add``
takes ints.
"""

from __future__ import annotations

import inspect
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import _state, states
from .exceptions import ImproperlyConfigured, MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from .app import Celery
    from .result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("celeriac.task")


class Context:
    """``task.request``: what the worker knows about the message being executed."""

    id: Any = None
    args: Any = None
    kwargs: Any = None
    retries = 0
    eta: str | None = None
    expires: str | None = None
    is_eager = False
    headers: dict[str, Any] | None = None
    delivery_info: dict[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    hostname: str | None = None
    origin: str | None = None
    timelimit: Any = None
    ignore_result = False
    task: str | None = None
    shadow: str | None = None
    stamps: dict[str, Any] | None = None
    priority: int | None = None
    date_started: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"<Context: {self.__dict__}>"


_EMPTY = Context()


def _parse_rate(rate: str | float | int | None) -> float | None:
    """'10/s' | '100/m' | '1000/h' | 5 -> tasks per second (None = unlimited)."""
    if rate in (None, "", 0):
        return None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        if rate < 0 or rate != rate:
            raise ImproperlyConfigured(f"Invalid rate_limit {rate!r}: must not be negative")
        return float(rate)
    text = str(rate).strip()
    num, _, unit = text.partition("/")
    try:
        n = float(num)
    except ValueError:
        raise ImproperlyConfigured(f"Invalid rate_limit {rate!r}: expected '10/s', '100/m' or '1000/h'") from None
    if n < 0 or n != n:
        raise ImproperlyConfigured(f"Invalid rate_limit {rate!r}: the number must not be negative")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower()[:1] if unit else "")
    if per is None:
        raise ImproperlyConfigured(f"Invalid rate_limit {rate!r}: unit must be s, m or h")
    return n / per


class Task(Generic[P, R]):
    """A task type.  Subclass it for class-based tasks; ``@app.task`` makes instances."""

    name: str | None = None
    app: Celery | None = None
    typing = True
    abstract = False
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | float | None = None
    ignore_result: bool | None = None
    trail = True
    send_events = True
    store_errors_even_if_ignored: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    throws: tuple[type[BaseException], ...] = ()
    expires: float | datetime | None = None
    priority: int | None = None
    queue: str | None = None
    routing_key: str | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    global_rate_limit: str | float | None = None
    _bound_self = False
    _orig_run: Callable[..., Any] | None = None

    # -- calling ---------------------------------------------------------------
    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError(f"Task {self.name!r} defines no run() method")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if _state.current_task_request() is None or _state.current_task_request().task != self.name:
            _state.push_request(Context(args=args, kwargs=kwargs, task=self.name, is_eager=True))
            try:
                return self.run(*args, **kwargs)
            finally:
                _state.pop_request()
        return self.run(*args, **kwargs)

    @property
    def request(self) -> Context:
        req = _state.current_task_request()
        return req if req is not None else _EMPTY

    @property
    def __wrapped__(self) -> Any:
        return self._orig_run

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return str(self.name or type(self).__name__).rsplit(".", 1)[-1]

    def _get_app(self) -> Celery:
        return self.app if self.app is not None else _state.get_current_app()

    # -- sending ---------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; returns its AsyncResult."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    task_id: str | None = None, producer: Any = None, link: Any = None,
                    link_error: Any = None, shadow: str | None = None, **options: Any) -> AsyncResult[R]:
        app = self._get_app()
        if self.typing:
            self._check_arguments(args or (), kwargs or {})
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=link, link_error=link_error, **options)
        if task_id is None and link is None and link_error is None and shadow is None and not options:
            sent = app._send_plain(self, args, kwargs)  # delay(): a clone of the task's last message
            if sent is not None:
                return sent
        return app.send_task(self.name or "", args, kwargs, task_id=task_id, link=link,
                             link_error=link_error, shadow=shadow, _task=self, **options)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``await task.delay_async(...)``: send without blocking the event loop."""
        return await self.apply_async_async(args, kwargs)

    async def apply_async_async(self, args: Sequence[Any] | None = None,
                                kwargs: dict[str, Any] | None = None, **options: Any) -> AsyncResult[R]:
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.apply_async(args, kwargs, **options))

    def apply_many(self, arguments: Iterable[Sequence[Any] | tuple[Sequence[Any], dict[str, Any]]],
                   **options: Any) -> list[AsyncResult[R]]:
        """Bulk send: one broker round trip for every call.  Items are ``args`` tuples or
        ``(args, kwargs)`` pairs."""
        calls = []
        for item in arguments:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict) \
                    and isinstance(item[0], (list, tuple)):
                calls.append((tuple(item[0]), item[1]))
            else:
                calls.append((tuple(item), {}))
        return self._get_app().send_many(self, calls, **options)

    def _check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        fn = self._orig_run
        if fn is None:
            return
        arity = getattr(self, "_arity_cache", None)
        if arity is not None and not kwargs and arity[0] <= len(args) <= arity[1]:
            return  # positional arguments only, as many as the function takes: binds
        sig = getattr(self, "_signature_cache", None)
        if sig is None:
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                return
            if self._bound_self:
                params = list(sig.parameters.values())[1:]
                sig = sig.replace(parameters=params)
            self._signature_cache = sig
            params = list(sig.parameters.values())
            if all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
                self._arity_cache = (sum(p.default is p.empty for p in params), len(params))
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{sig}: {exc}") from None

    def apply(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
              task_id: str | None = None, link: Any = None, link_error: Any = None,
              **options: Any) -> EagerResult[R]:
        """Run here, now, through the worker's execution path; returns an EagerResult."""
        from .worker.execute import run_eager
        return run_eager(self._get_app(), self, list(args or ()), dict(kwargs or {}),
                         task_id or str(uuid.uuid4()), link=link, link_error=link_error, **options)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult[R]:
        from .result import AsyncResult
        return AsyncResult(task_id, app=self._get_app(), task_name=self.name, **kwargs)

    # -- inside a task ---------------------------------------------------------
    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None, **kwargs: Any) -> None:
        """Record a custom state (e.g. ``PROGRESS``) visible in ``AsyncResult.info``."""
        from .protocol.results import make_meta
        tid = task_id or self.request.id
        if not tid:
            raise ValueError("update_state() needs a task_id outside a running task")
        self._get_app().backend.store_meta(
            make_meta(tid, state or states.PENDING, meta, ready=(state in states.READY_STATES)))

    def retry(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True, eta: datetime | None = None,
              countdown: float | None = None, max_retries: int | None = None, **options: Any) -> Retry:
        """Send this task again (same id, ``retries + 1``) and raise :class:`Retry`."""
        req = self.request
        retries = (req.retries or 0) + 1
        limit = max_retries if max_retries is not None else self.max_retries
        if req.is_eager and not req.id:
            raise exc if exc is not None else Retry("Task can be retried", None)
        if limit is not None and retries > limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{req.id}] args:{req.args} kwargs:{req.kwargs}",
                task_args=req.args, task_kwargs=req.kwargs)
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        when: Any = eta if eta is not None else countdown
        new_args = list(req.args if args is None else args)
        new_kwargs = dict(req.kwargs if kwargs is None else kwargs)
        self._check_serializable(new_args, new_kwargs)
        if req.is_eager:
            # eager retries run again inline, like Celery's apply()
            ret = Retry(exc=exc, when=when, is_eager=True)
            ret.sig = (new_args, new_kwargs, retries)
            raise ret
        app = self._get_app()
        if eta is None and countdown is not None:
            eta = datetime.now(timezone.utc) + timedelta(seconds=float(countdown))
        queue = options.pop("queue", None) or (req.delivery_info or {}).get("routing_key")
        app.send_task(self.name or "", new_args, new_kwargs, task_id=req.id, eta=eta,
                      retries=retries, root_id=req.root_id, parent_id=req.id,
                      group_id=req.group, group_index=req.group_index, queue=queue,
                      chain=req.chain, chord=req.chord, link=req.callbacks, link_error=req.errbacks,
                      time_limit=(req.timelimit or [None, None])[0],
                      soft_time_limit=(req.timelimit or [None, None])[1],
                      reply_to=req.reply_to, _task=self, _raw_embed=True, **options)
        ret = Retry(exc=exc, when=when)
        if throw:
            raise ret
        return ret

    def _check_serializable(self, args: Any, kwargs: Any) -> None:
        from .protocol import codecs
        serializer = self.serializer or self._get_app().conf.task_serializer
        for i, value in enumerate(args):
            try:
                codecs.dumps(value, serializer)
            except Exception as exc:
                raise TypeError(f"{self.name}.retry(): argument {i} ({value!r}) cannot be serialized "
                                f"with {serializer}: {exc}") from None
        for key, value in kwargs.items():
            try:
                codecs.dumps(value, serializer)
            except Exception as exc:
                raise TypeError(f"{self.name}.retry(): keyword argument {key!r} ({value!r}) cannot be "
                                f"serialized with {serializer}: {exc}") from None

    def backoff_delay(self, retries: int) -> float:
        """Countdown for autoretry: exponential ``retry_backoff`` with cap and full jitter."""
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * (2 ** retries), float(self.retry_backoff_max))
        if self.retry_jitter:
            delay = random.randrange(int(delay) + 1) if delay >= 1 else random.random() * delay
        return float(delay)

    # -- canvas shortcuts ------------------------------------------------------
    def signature(self, args: Sequence[Any] | None = None, *starargs: Any, **starkwargs: Any) -> Any:
        from .canvas import signature
        return signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Any:
        from .canvas import Signature
        return Signature(self, args, kwargs, app=self._get_app())

    def si(self, *args: Any, **kwargs: Any) -> Any:
        from .canvas import Signature
        return Signature(self, args, kwargs, immutable=True, app=self._get_app())

    def chunks(self, it: Iterable[Any], n: int) -> Any:
        """``it`` (argument tuples) in parts of ``n``: one message per part, as a group."""
        from .canvas import chunks
        return chunks(self.s(), it, n, app=self._get_app())

    def map(self, it: Iterable[Any]) -> Any:
        """One message; the worker returns ``[self(x) for x in it]``."""
        from .canvas import xmap
        return xmap(self.s(), it, app=self._get_app())

    def starmap(self, it: Iterable[Any]) -> Any:
        """One message; the worker returns ``[self(*x) for x in it]``."""
        from .canvas import xstarmap
        return xstarmap(self.s(), it, app=self._get_app())

    def replace(self, sig: Any) -> Any:
        """Inside a task: let ``sig`` finish in this task's place (same id, callbacks, chain
        and chord); raises ``Ignore`` to end the current task."""
        from .canvas import replace_task
        return replace_task(self, sig)

    # -- hooks (override in subclasses, or pass on_success= etc. to @task) -----
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Called by the worker before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called by the worker when the task succeeded."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called by the worker when the task failed."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called by the worker when the task is to be retried."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:
        """Called by the worker after the task returned, whatever the outcome."""

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self._get_app().main}>"


def task_name_for(app_main: str | None, fun: Callable[..., Any]) -> str:
    """Celery's automatic name: ``module.function`` (``__main__`` becomes the app's main name)."""
    module = fun.__module__
    if module == "__main__" and app_main:
        module = app_main
    return f"{module}.{fun.__name__}"


def make_task(app: Celery, fun: Callable[..., Any], base: type[Task[Any, Any]] | None = None,
              bind: bool = False, name: str | None = None, **options: Any) -> Task[Any, Any]:
    """Build a task instance from a function (no classes are created at run time)."""
    cls: type[Task[Any, Any]] = base or app.Task
    task = cls.__new__(cls)
    task.app = app
    task.name = name or task_name_for(app.main, fun)
    task._orig_run = fun
    task._bound_self = bind
    task.run = fun.__get__(task) if bind else fun  # type: ignore[method-assign]
    task.__doc__ = fun.__doc__
    task.__module__ = fun.__module__
    for hook in ("on_success", "on_failure", "on_retry", "after_return", "before_start"):
        fn = options.pop(hook, None)
        if fn is not None:
            setattr(task, hook, _hook_adapter(task, hook, fn))
    if "autoretry_for" in options:
        options["autoretry_for"] = tuple(options["autoretry_for"])
    for key, value in options.items():
        if not hasattr(cls, key):
            raise TypeError(f"@task got an unexpected option {key!r} for {task.name}")
        setattr(task, key, value)
    validate_task(task)
    if type(task).__init__ is not object.__init__:
        try:
            type(task).__init__(task)
        except TypeError:
            pass
    return task


def validate_task(task: Task[Any, Any]) -> None:
    """Declaration-time checks: rate limits parse, time limits are positive and consistent."""
    for label in ("rate_limit", "global_rate_limit"):
        value = getattr(task, label, None)
        if value is not None:
            try:
                _parse_rate(value)
            except ImproperlyConfigured as exc:
                raise ImproperlyConfigured(f"{task.name}: {label}: {exc}") from None
    validate_time_limits(task.name, task.time_limit, task.soft_time_limit)


def validate_time_limits(name: str | None, hard: float | None, soft: float | None) -> None:
    for label, value in (("time_limit", hard), ("soft_time_limit", soft)):
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ImproperlyConfigured(f"{name}: {label} must be a positive number of seconds, got {value!r}")
    if hard is not None and soft is not None and soft > hard:
        raise ImproperlyConfigured(
            f"{name}: soft_time_limit ({soft}) is larger than time_limit ({hard}); "
            "the hard limit would always fire first")


def _hook_adapter(task: Task[Any, Any], hook: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator-style hooks (``@shared_task(on_failure=f)``) become methods, as in Celery:
    ``f`` is called with the task as its first argument, then the hook's arguments."""

    def call(*args: Any) -> Any:
        return fn(task, *args)

    call.__name__ = getattr(fn, "__name__", hook)
    return call
