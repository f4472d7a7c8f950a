"""The application: configuration, task registry, broker and backend, sending."""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, overload

from . import _state, signals
from ._fastid import getpid, uuid4
from .builtin_tasks import register_builtins
from .config import Config
from .exceptions import NotRegistered
from .protocol.message import build_task_message, safe_repr
from .result import AsyncResult as _AsyncResult
from .task import P, R, make_task, validate_task, validate_time_limits
from .task import Task as BaseTask

logger = logging.getLogger("celeriac.app")
F = TypeVar("F", bound=Callable[..., Any])


class TaskRegistry(dict[str, BaseTask[Any, Any]]):
    def __missing__(self, key: str) -> BaseTask[Any, Any]:
        raise NotRegistered(key)

    def register(self, task: BaseTask[Any, Any]) -> BaseTask[Any, Any]:
        self[task.name or ""] = task
        return task

    def unregister(self, name: str | BaseTask[Any, Any]) -> None:
        key = name if isinstance(name, str) else (name.name or "")
        try:
            del self[key]
        except KeyError:
            raise NotRegistered(key) from None


class _Router:
    """``task_routes``: a dict (names or globs), a list of dicts/functions, or a function."""

    def __init__(self, routes: Any) -> None:
        self.rules: list[Any] = []
        if routes is None:
            return
        for item in routes if isinstance(routes, (list, tuple)) else [routes]:
            if isinstance(item, str):
                item = _import_string(item)
            if isinstance(item, dict):
                for pattern, route in item.items():
                    if isinstance(pattern, re.Pattern):
                        self.rules.append((pattern.match, route))
                    elif any(ch in pattern for ch in "*?["):
                        self.rules.append((lambda name, p=pattern: fnmatch.fnmatchcase(name, p), route))
                    else:
                        self.rules.append((lambda name, p=pattern: name == p, route))
            elif callable(item):
                self.rules.append((None, item))

    def route(self, name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        for match, route in self.rules:
            if match is None:
                found = route(name, args, kwargs, options, task=None)
                if found:
                    return {"queue": found} if isinstance(found, str) else dict(found)
            elif match(name):
                return {"queue": route} if isinstance(route, str) else dict(route)
        return None


def _import_string(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not attr:
        module, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _queue_name(q: Any) -> str:
    return q if isinstance(q, str) else getattr(q, "name", str(q))


class Celery:
    """A celeriac application (Celery's ``Celery`` class)."""

    Task: type[BaseTask[Any, Any]] = BaseTask

    def __init__(self, main: str | None = None, loader: Any = None, backend: str | None = None,
                 amqp: Any = None, events: Any = None, log: Any = None, control: Any = None,
                 set_as_current: bool = True, tasks: Any = None, broker: str | None = None,
                 include: Sequence[str] | None = None, changes: dict[str, Any] | None = None,
                 config_source: Any = None, fixups: Any = None, task_cls: Any = None,
                 autofinalize: bool = True, namespace: str | None = None, strict_typing: bool = True,
                 **kwargs: Any) -> None:
        self.main = main
        self.strict_typing = strict_typing
        explicit: dict[str, Any] = {}
        if broker is not None:
            explicit["broker_url"] = broker
        if backend is not None:
            explicit["result_backend"] = backend
        if include:
            explicit["include"] = tuple(include)
        for key, value in kwargs.items():
            explicit[key] = value
        self.conf = Config(explicit=explicit)
        self.conf.from_env()
        if changes:
            self.conf.update(changes)
        if config_source is not None:
            self.conf.from_object(config_source, namespace=namespace)
        if task_cls is not None:
            self.Task = _import_string(task_cls) if isinstance(task_cls, str) else task_cls
        self.tasks = TaskRegistry()
        self._broker: Any = None
        self._backend: Any = None
        self._lock = threading.RLock()
        self._finalized = False
        self._autodiscover: list[tuple[Any, str]] = []
        self._control: Any = None
        self.on_configure = signals.Signal("on_configure")
        self.on_after_configure = signals.Signal("on_after_configure")
        self.on_after_finalize = signals.Signal("on_after_finalize")
        self._configured = False
        register_builtins(self)  # celery.map, celery.starmap, celery.chunks, celery.accumulate
        for ctor in _state.shared_task_constructors:
            ctor(self)
        if set_as_current:
            _state.set_current_app(self)

    # -- configuration ---------------------------------------------------------
    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False,
                           namespace: str | None = None) -> None:
        self.conf.from_object(obj, namespace=namespace, silent=silent)
        self._reset_connections()

    def config_from_envvar(self, variable_name: str, silent: bool = False, force: bool = False) -> bool:
        self.conf.from_envvar(variable_name, silent=silent)
        self._reset_connections()
        return True

    def config_from_cmdline(self, argv: Sequence[str], namespace: str = "celery") -> None:
        for item in argv:
            key, _, value = item.partition("=")
            self.conf[key] = value

    def _reset_connections(self) -> None:
        self._broker = None
        self._backend = None

    def _configure(self) -> None:
        if not self._configured:
            self._configured = True
            self.on_configure.send(sender=self)
            self.on_after_configure.send(sender=self, source=self.conf)

    def finalize(self, auto: bool = False) -> None:
        """Import ``include``/``imports`` modules and autodiscovered packages, fire app signals."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
            self._configure()
            self.import_default_modules()
            self.on_after_finalize.send(sender=self)

    def import_default_modules(self) -> list[Any]:
        modules = []
        names = list(self.conf.get("imports") or ()) + list(self.conf.get("include") or ())
        for name in names:
            modules.append(importlib.import_module(name))
        for packages, related in self._autodiscover:
            modules.extend(self._discover(packages, related))
        signals.import_modules.send(sender=self)
        return modules

    def autodiscover_tasks(self, packages: Any = None, related_name: str = "tasks",
                           force: bool = False) -> None:
        """Import ``<package>.tasks`` for each package (Django's INSTALLED_APPS when none given)."""
        self._autodiscover.append((packages, related_name))
        if force or self._finalized:
            self._discover(packages, related_name)

    def _discover(self, packages: Any, related_name: str) -> list[Any]:
        if callable(packages):
            packages = packages()
        if packages is None:
            try:
                from django.apps import apps  # type: ignore[import-not-found]
                packages = [cfg.name for cfg in apps.get_app_configs()]
            except Exception:
                packages = []
        found = []
        for pkg in packages:
            name = f"{pkg}.{related_name}" if related_name else pkg
            try:
                found.append(importlib.import_module(name))
            except ModuleNotFoundError as exc:
                if exc.name not in (name, pkg):
                    raise
        return found

    # -- tasks -----------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, R]) -> BaseTask[P, R]: ...

    @overload
    def task(self, *, name: str | None = ..., bind: bool = ..., base: Any = ...,
             **options: Any) -> Callable[[Callable[P, R]], BaseTask[P, R]]: ...

    def task(self, *args: Any, **opts: Any) -> Any:
        """``@app.task`` or ``@app.task(name=..., bind=True, ...)``."""
        if len(args) == 1 and callable(args[0]) and not opts:
            return self._create_task(args[0])
        if args:
            raise TypeError("@task() takes keyword arguments only")

        def decorator(fun: Callable[..., Any]) -> BaseTask[Any, Any]:
            return self._create_task(fun, **opts)

        return decorator

    def _create_task(self, fun: Callable[..., Any], **opts: Any) -> BaseTask[Any, Any]:
        opts.pop("shared", None)
        opts.pop("lazy", None)
        if isinstance(fun, BaseTask):
            return fun
        name = opts.get("name") or None
        task = make_task(self, fun, **opts)
        existing = self.tasks.get(task.name or "")
        if name is None and existing is not None and getattr(existing, "_orig_run", None) is fun:
            return existing
        self.tasks.register(task)
        return task

    def register_task(self, task: BaseTask[Any, Any] | type[BaseTask[Any, Any]], **options: Any) -> BaseTask[Any, Any]:
        """Register a class-based task (an instance or the class itself)."""
        if isinstance(task, type):
            task = task()
        if not task.name:
            cls = type(task)
            task.name = f"{cls.__module__}.{cls.__name__}"
        task.app = self
        for key, value in options.items():
            setattr(task, key, value)
        validate_task(task)
        self.tasks.register(task)
        return task

    # -- connections -----------------------------------------------------------
    @property
    def broker_url(self) -> str:
        url = self.conf.broker_url or self.conf.get("broker_write_url") or os.environ.get("CELERIAC_BROKER_URL")
        if url:
            return str(url)
        from ._sqlite import DEFAULT_URL  # sqlite3 only when it is used
        return DEFAULT_URL

    @property
    def broker(self) -> Any:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    from .brokers import broker_from_url
                    opts = dict(self.conf.broker_transport_options or {})
                    lease = opts.pop("lease_seconds", None) or opts.get("visibility_timeout_lease")
                    kwargs: dict[str, Any] = {"options": opts}
                    if lease:
                        kwargs["lease_seconds"] = float(lease)
                    if self.conf.broker_use_ssl:
                        opts["ssl"] = self.conf.broker_use_ssl
                    for key in ("redis_socket_timeout", "redis_socket_connect_timeout"):
                        value = self.conf.get(key)
                        if value is not None:
                            opts.setdefault(key.replace("redis_", ""), value)
                    self._broker = broker_from_url(self.broker_url, **kwargs)
        return self._broker

    @property
    def backend(self) -> Any:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Any:
        from .backends import backend_from_url
        from .backends.base import DisabledBackend
        url = self.conf.result_backend or os.environ.get("CELERIAC_RESULT_BACKEND")
        if not url:
            broker_url = self.broker_url
            if broker_url.startswith(("sqlite", "memory")):
                url = broker_url  # the embedded store keeps results next to the queue
            else:
                return DisabledBackend("disabled://")
        opts: dict[str, Any] = {
            "serializer": self.conf.result_serializer or "json",
            "accept": self.conf.result_accept_content or self.conf.accept_content,
            "expires": self.conf.get_seconds("result_expires"),
            "options": dict(self.conf.result_backend_transport_options or {}),
        }
        if self.conf.redis_backend_use_ssl:
            opts["options"]["ssl"] = self.conf.redis_backend_use_ssl
        for key in ("redis_socket_timeout", "redis_socket_connect_timeout"):
            value = self.conf.get(key)
            if value is not None:
                opts["options"].setdefault(key.replace("redis_", ""), value)
        return backend_from_url(url, **opts)

    @property
    def control(self) -> Any:
        if self._control is None:
            from .control import Control  # type: ignore[import-not-found]
            self._control = Control(self)
        return self._control

    @property
    def events(self) -> Any:
        """``app.events``: ``Receiver``, ``State`` and ``Dispatcher`` (celeriac/events)."""
        events = self.__dict__.get("_events")
        if events is None:
            from .events import Events
            events = self._events = Events(self)
        return events

    def connection_for_write(self) -> Any:
        return self.broker

    connection = connection_for_write

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()
        self._reset_connections()

    # -- sending ---------------------------------------------------------------
    def _route(self, name: str, args: Any, kwargs: Any, options: dict[str, Any],
               task: BaseTask[Any, Any] | None) -> str:
        queue = options.get("queue")
        if queue is None:
            router = getattr(self, "_router_cache", None)
            routes = self.conf.task_routes
            if router is None or router[0] is not routes:
                router = (routes, _Router(routes))
                self._router_cache = router
            route = router[1].route(name, args, kwargs, options)
            if route:
                for key, value in route.items():
                    options.setdefault(key, value)
                queue = route.get("queue")
        if queue is None and task is not None:
            queue = task.queue
        return _queue_name(queue or self.conf.task_default_queue)

    def _message(self, name: str, args: Any, kwargs: Any, task_id: str | None,
                 task: BaseTask[Any, Any] | None, options: dict[str, Any]) -> tuple[Any, str, float | None]:
        conf = self.conf
        task_id = task_id or uuid4()
        queue = self._route(name, args, kwargs, options, task)
        now = datetime.now(timezone.utc)
        eta = options.get("eta")
        countdown = options.get("countdown")
        if countdown is not None:
            eta = now + timedelta(seconds=float(countdown))
        elif isinstance(eta, str):
            eta = datetime.fromisoformat(eta)
        if isinstance(eta, datetime) and eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        expires = options.get("expires", task.expires if task is not None else None)
        if isinstance(expires, (int, float)):
            expires = now + timedelta(seconds=float(expires))
        elif isinstance(expires, timedelta):
            expires = now + expires
        elif isinstance(expires, str):
            expires = datetime.fromisoformat(expires)
        priority = options.get("priority")
        if priority is None and task is not None:
            priority = task.priority
        if priority is None:
            priority = conf.task_default_priority
        time_limit = options.get("time_limit")
        soft_time_limit = options.get("soft_time_limit")
        if time_limit is not None or soft_time_limit is not None:
            validate_time_limits(name, time_limit, soft_time_limit)
        ignore_result = options.get("ignore_result")
        if ignore_result is None:
            ignore_result = task.ignore_result if task is not None and task.ignore_result is not None \
                else conf.task_ignore_result
        parent = _state.current_task_request()
        parent_id = options.get("parent_id")
        root_id = options.get("root_id")
        if parent is not None and parent.id and not options.get("_raw_embed"):
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        serializer = options.get("serializer") or (task.serializer if task is not None else None) \
            or conf.task_serializer
        callbacks, errbacks, chain, chord = self._embed(options)
        env = build_task_message(
            name, task_id, args or (), kwargs or {},
            eta=eta, expires=expires, retries=options.get("retries", 0),
            time_limit=time_limit, soft_time_limit=soft_time_limit,
            root_id=root_id, parent_id=parent_id,
            group_id=options.get("group_id"), group_index=options.get("group_index"),
            shadow=options.get("shadow"), callbacks=callbacks, errbacks=errbacks,
            chain=chain, chord=chord, ignore_result=bool(ignore_result),
            priority=priority, reply_to=options.get("reply_to") or self.oid,
            serializer=serializer,
            compression=options.get("compression") or conf.task_compression,
            extra_headers=options.get("headers"),
            stamped_headers=options.get("stamped_headers"), stamps=options.get("stamps"),
            replaced_task_nesting=options.get("replaced_task_nesting", 0),
        )
        not_before = eta.timestamp() if isinstance(eta, datetime) else None
        return env, queue, not_before

    @staticmethod
    def _embed(options: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
        def as_list(value: Any) -> Any:
            if value is None:
                return None
            items = value if isinstance(value, (list, tuple)) else [value]
            out = [dict(s) if isinstance(s, dict) else s for s in items]
            return out or None

        chord = options.get("chord")
        return (as_list(options.get("link")), as_list(options.get("link_error")),
                as_list(options.get("chain")), dict(chord) if chord is not None else None)

    @property
    def oid(self) -> str:
        oid = getattr(self, "_oid", None)
        if oid is None:
            oid = self._oid = str(uuid.uuid3(uuid.NAMESPACE_OID, f"{uuid.getnode()}{os.getpid()}{id(self)}"))
        return oid

    def send_task(self, name: str, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                  countdown: float | None = None, eta: datetime | None = None, task_id: str | None = None,
                  producer: Any = None, connection: Any = None, router: Any = None,
                  result_cls: Any = None, expires: Any = None, publisher: Any = None, link: Any = None,
                  link_error: Any = None, add_to_parent: bool = True, group_id: str | None = None,
                  group_index: int | None = None, retries: int = 0, chord: Any = None,
                  reply_to: str | None = None, time_limit: float | None = None,
                  soft_time_limit: float | None = None, root_id: str | None = None,
                  parent_id: str | None = None, route_name: str | None = None, shadow: str | None = None,
                  chain: Any = None, task_type: Any = None, replaced_task_nesting: int = 0,
                  _task: BaseTask[Any, Any] | None = None, **options: Any) -> Any:
        """Send a task by name (the worker needs to know it; this process need not)."""
        self._configure()
        if _task is None:
            _task = self.tasks.get(name)
        # only the options given (a missing key reads as None, or 0 for the counters)
        opts = dict(options) if options else {}
        for key, value in (("countdown", countdown), ("eta", eta), ("expires", expires), ("link", link),
                           ("link_error", link_error), ("group_id", group_id), ("group_index", group_index),
                           ("chord", chord), ("reply_to", reply_to), ("time_limit", time_limit),
                           ("soft_time_limit", soft_time_limit), ("root_id", root_id),
                           ("parent_id", parent_id), ("shadow", shadow), ("chain", chain)):
            if value is not None:
                opts[key] = value
        if retries:
            opts["retries"] = retries
        if replaced_task_nesting:
            opts["replaced_task_nesting"] = replaced_task_nesting
        if opts.get("time_limit") is None and _task is not None and _task.time_limit is not None \
                and "time_limit" not in options:
            pass  # task-level limits are applied by the worker, not sent on the wire
        env, queue, not_before = self._message(name, args, kwargs, task_id, _task, opts)
        return self._publish_built(name, env, queue, not_before, result_cls, add_to_parent)

    def _send_plain(self, task: BaseTask[Any, Any], args: Any, kwargs: Any) -> Any:
        """``delay(*args)`` with no options and no parent task: the message is the task's
        previous plain message with new arguments and a new id (``argument_cloner``), as
        long as the configuration, the task's options and the routes are those it was made
        with.  None when that does not apply (send_task builds it in full)."""
        if _state.current_task_request() is not None:
            return None
        name = task.name or ""
        key = (self.conf._data(), task.queue, task.priority, task.expires, task.ignore_result, task.serializer,
               getpid())
        cache: dict[str, Any] = self.__dict__.setdefault("_plain_cache", {})
        hit = cache.get(name)
        if hit is not None and hit[1] is task and hit[0] == key:  # (items compared by identity first)
            clone, queue = hit[2], hit[3]
            if clone is None:
                return None
            return self._publish_built(name, clone(args, kwargs), queue, None, None, True)
        self._configure()
        opts: dict[str, Any] = {}
        env, queue, not_before = self._message(name, args, kwargs, None, task, opts)
        clone = None
        if not opts and not_before is None and task.expires is None:  # the route added no options
            clone = self._bulk_cloner(env, opts)
        cache[name] = (key, task, clone, queue)
        return self._publish_built(name, env, queue, not_before, None, True)

    def _publish_built(self, name: str, env: Any, queue: str, not_before: float | None,
                       result_cls: Any, add_to_parent: bool) -> Any:
        task_id = env.headers["id"]
        if signals.before_task_publish._receivers:
            signals.before_task_publish.send(sender=name, body=None, exchange="", routing_key=queue,
                                             headers=env.headers, properties=env.properties,
                                             declare=[], retry_policy=None)
        self.broker.publish(env, queue, not_before=not_before)
        if self.conf.task_send_sent_event:
            from .events.dispatcher import send_task_sent
            send_task_sent(self, env, queue)
        if signals.after_task_publish._receivers:
            signals.after_task_publish.send(sender=name, body=None, exchange="", routing_key=queue,
                                            headers=env.headers)
        parent = _state.current_task_request()
        result: Any = (result_cls or _AsyncResult)(task_id, app=self, task_name=name)
        if add_to_parent and parent is not None and getattr(parent, "children", None) is not None:
            parent.children.append(result)
        return result

    def send_many(self, task: BaseTask[Any, Any], calls: Iterable[tuple[Sequence[Any], dict[str, Any]]],
                  **options: Any) -> list[Any]:
        """Bulk send: every call in one broker round trip (see _bulk_send.py)."""
        from ._bulk_send import send_many
        return send_many(self, task, calls, options)

    def _bulk_embed(self, opts: dict[str, Any]) -> dict[str, Any] | None:
        """The embed of messages that can be clones of one built with ``opts``: calls of one
        bulk send differ only in their arguments, unless a routing function (it sees the
        arguments) or explicit headers are involved (None: each is built in full)."""
        router = getattr(self, "_router_cache", None)
        if opts.get("headers") or (router is not None and any(m is None for m, _ in router[1].rules)):
            return None
        callbacks, errbacks, chain, chord = self._embed(opts)
        return {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}

    def _bulk_cloner(self, env: Any, opts: dict[str, Any]) -> Any:
        """argument_cloner for messages like ``env`` (built with ``opts``), or None."""
        embed = self._bulk_embed(opts)
        if embed is None:
            return None
        from .protocol.message import argument_cloner
        return argument_cloner(env, embed)

    def AsyncResult(self, id: str, **kwargs: Any) -> Any:
        from .result import AsyncResult
        return AsyncResult(id, app=self, **kwargs)

    @property
    def GroupResult(self) -> Any:
        """``app.GroupResult(id, results)`` and ``app.GroupResult.restore(id)``, as in Celery."""
        from .result import AppGroupResult
        return AppGroupResult(self)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from .canvas import signature
        kwargs["app"] = self
        return signature(*args, **kwargs)

    # -- periodic tasks --------------------------------------------------------
    def add_periodic_task(self, schedule: Any, sig: Any, args: Sequence[Any] = (),
                          kwargs: dict[str, Any] | None = None, name: str | None = None,
                          **opts: Any) -> str:
        key = name or f"{getattr(sig, 'name', sig)!s}({safe_repr(tuple(getattr(sig, 'args', ()) or args))})"
        entry = {
            "task": getattr(sig, "name", None) or getattr(sig, "task", None) or str(sig),
            "schedule": schedule,
            "args": tuple(getattr(sig, "args", None) or args),
            "kwargs": dict(getattr(sig, "kwargs", None) or kwargs or {}),
            "options": dict(getattr(sig, "options", None) or {}, **opts),
        }
        schedule_conf = dict(self.conf.beat_schedule or {})
        schedule_conf[key] = entry
        self.conf.beat_schedule = schedule_conf
        return key

    # -- misc ------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    @property
    def timezone(self) -> Any:
        from zoneinfo import ZoneInfo
        tz = self.conf.timezone
        if tz is None:
            return timezone.utc
        return ZoneInfo(tz) if isinstance(tz, str) else tz

    def set_current(self) -> None:
        _state.set_current_app(self)

    def set_default(self) -> None:
        _state.set_current_app(self)

    def worker_main(self, argv: Sequence[str] | None = None) -> None:
        from .cli.main import main
        main(["-A", "__app__", *(argv or ["worker"])], app=self)

    def start(self, argv: Sequence[str] | None = None) -> None:
        from .cli.main import main
        main(list(argv or []), app=self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} at {id(self):#x}>"

    def __enter__(self) -> Celery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shared_task(*args: Any, **kwargs: Any) -> Any:
    """A task for every app: created on each existing app and on apps made later."""

    def create(fun: Callable[..., Any]) -> Any:
        name = kwargs.get("name")

        def ctor(app: Celery) -> BaseTask[Any, Any]:
            return app._create_task(fun, **dict(kwargs))

        _state.shared_task_constructors.append(ctor)
        # register on the current app now and return a proxy that follows the current app
        task = ctor(_state.get_current_app())
        task_name = name or task.name
        return _SharedTaskProxy(task_name, ctor)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return create(args[0])
    return create


class _SharedTaskProxy:
    """What ``@shared_task`` returns: the task of that name on the current app."""

    def __init__(self, name: str | None, ctor: Callable[[Celery], BaseTask[Any, Any]]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_ctor", ctor)

    def _get(self) -> BaseTask[Any, Any]:
        app = _state.get_current_app()
        task = app.tasks.get(self._name)
        if task is None:
            task = self._ctor(app)
        return task

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._get(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._get(), attr, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self._get())
