"""The remote control commands a worker answers, with Celery's names, arguments and reply
shapes (celery-wire.md 5.5).  Each handler is ``fn(server, **arguments) -> value``; the
value goes back as ``{nodename: value}`` when the caller asked for a reply.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import __version__
from ..protocol import codecs
from ..protocol.message import decode_task_message
from . import wire

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from .server import ControlServer

logger = logging.getLogger("celeriac.control")
Handler = Callable[..., Any]
COMMANDS: dict[str, Handler] = {}
DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")


def command(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler under its function name and any aliases."""

    def register(fn: Handler) -> Handler:
        for name in (fn.__name__.strip("_"), *names):
            COMMANDS[name] = fn
        return fn

    return register


def ok(message: str) -> dict[str, str]:
    return {"ok": message}


def error(message: str) -> dict[str, str]:
    return {"error": message}


# -- what runs where ---------------------------------------------------------------

def _children(server: ControlServer) -> list[Any]:
    sup = server.worker.supervisor
    return list(sup.children.values()) if sup is not None else []


def _request_info(server: ControlServer, delivery: Delivery | None, task_id: str, name: str,
                  time_start: float | None, pid: int | None, acks_late: bool, safe: bool) -> dict[str, Any]:
    args: Any = []
    kwargs: Any = {}
    priority, redelivered, queue = 0, False, None
    if delivery is not None:
        queue, redelivered = delivery.queue, delivery.redelivered
        try:
            msg = decode_task_message(delivery.envelope, codecs.accept_set(server.app.conf.accept_content))
            args, kwargs, priority = msg.args, msg.kwargs, msg.priority
            if safe:
                args, kwargs = msg.argsrepr, msg.kwargsrepr
            name = msg.shadow or msg.task or name
        except Exception as exc:  # shown without its arguments
            logger.debug("Cannot decode %s for inspect: %r", task_id, exc)
    return {"id": task_id, "name": name, "args": args, "kwargs": kwargs, "type": name,
            "hostname": server.hostname, "time_start": time_start,
            "acknowledged": bool(time_start is not None and not acks_late),
            "delivery_info": {"exchange": "", "routing_key": queue, "priority": priority,
                              "redelivered": redelivered},
            "worker_pid": pid}


def _holders(server: ControlServer) -> list[tuple[str, int, tuple[Any, ...] | None]]:
    """(consumer id, pid, running task as (id, name, start, acks_late)) for every process/thread."""
    out: list[tuple[str, int, tuple[Any, ...] | None]] = []
    for child in _children(server):
        r = child.slot.running()
        out.append((child.consumer_id, child.process.pid, (r[0], r[1], r[2], r[4]) if r else None))
    for loop in server.worker.loops:
        consumer = getattr(loop, "consumer", None)
        if consumer is None or hasattr(loop, "active"):
            continue
        running = list(consumer.running)
        cur = None
        if running:
            d = running[0]
            cur = (d.envelope.headers.get("id"), d.envelope.headers.get("task"), None, False)
        out.append((consumer.consumer_id, os.getpid(), cur))
    return out


def _leased(server: ControlServer, consumer_id: str) -> list[Delivery]:
    try:
        return list(server.broker.leased(consumer_id))
    except Exception as exc:
        logger.warning("Cannot list the messages held by %s: %r", consumer_id, exc)
        return []


@command()
def active(server: ControlServer, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    out = []
    for consumer_id, pid, running in _holders(server):
        if running is None:
            continue
        held = {d.envelope.headers.get("id"): d for d in _leased(server, consumer_id)}
        tid, name, start, acks_late = running
        out.append(_request_info(server, held.get(tid), tid, name, start or time.time(), pid,
                                 acks_late, bool(safe)))
    for loop in server.worker.loops:
        if hasattr(loop, "active"):  # the asyncio pool knows its own
            out.extend(loop.active())
    return out


@command()
def reserved(server: ControlServer, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Messages a process has fetched and not started yet."""
    out = []
    holders = _holders(server)
    for loop in server.worker.loops:
        consumer = getattr(loop, "consumer", None)
        if consumer is not None and hasattr(loop, "active"):
            holders.append((consumer.consumer_id, os.getpid(), None))
    running_ids = {h[2][0] for h in holders if h[2] is not None}
    running_ids |= {r.get("id") for loop in server.worker.loops if hasattr(loop, "active")
                    for r in loop.active()}
    for consumer_id, _pid, _running in holders:
        for d in _leased(server, consumer_id):
            tid = str(d.envelope.headers.get("id"))
            if tid in running_ids:
                continue
            out.append(_request_info(server, d, tid, d.envelope.headers.get("task") or "", None, None,
                                     False, bool(safe)))
    return out


@command()
def scheduled(server: ControlServer, **kwargs: Any) -> list[Any]:
    """ETA and countdown tasks wait in the broker, never in a worker: always empty."""
    return []


@command()
def query_task(server: ControlServer, ids: Any = None, **kwargs: Any) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    found: dict[str, Any] = {}
    for state, items in (("reserved", reserved(server)), ("active", active(server))):
        for info in items:
            if info["id"] in wanted:
                found[info["id"]] = [state, info]
    return found


# -- inspect -------------------------------------------------------------------------

@command()
def ping(server: ControlServer, **kwargs: Any) -> dict[str, str]:
    return ok("pong")


@command()
def clock(server: ControlServer, **kwargs: Any) -> dict[str, int]:
    return {"clock": server.clock}


@command()
def hello(server: ControlServer, from_node: str | None = None, revoked: Any = None,
          **kwargs: Any) -> dict[str, Any] | None:
    """Mingle, sent by a starting Celery worker: share revoked ids both ways."""
    if from_node == server.hostname:
        return None
    if revoked:
        ids = list(revoked) if not isinstance(revoked, dict) else list(revoked)
        server.revoke([str(i) for i in ids], persist=False)
    return {"revoked": sorted(server.known_revoked()), "clock": server.clock}


@command()
def report(server: ControlServer, **kwargs: Any) -> dict[str, str]:
    import platform
    return ok(f"celeriac:{__version__} ({platform.python_implementation()} {platform.python_version()}) "
              f"pool:{server.pool} broker:{_censor(server.app.broker_url)}")


@command("dump_tasks")
def registered(server: ControlServer, taskinfoitems: Any = None, builtins: bool = False,
               **kwargs: Any) -> list[str]:
    items = taskinfoitems or DEFAULT_TASK_INFO_ITEMS
    tasks = server.app.tasks
    out = []
    for name in sorted(tasks):
        if name.startswith("celery.") and not builtins:
            continue
        task = tasks[name]
        fields = [f"{f}={getattr(task, f)}" for f in items if getattr(task, f, None) is not None]
        out.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return out


@command("dump_revoked")
def revoked(server: ControlServer, **kwargs: Any) -> list[str]:
    return sorted(server.known_revoked())


@command("dump_conf")
def conf(server: ControlServer, with_defaults: bool = False, **kwargs: Any) -> dict[str, Any]:
    table = server.app.conf.table(with_defaults=with_defaults)
    return {str(k): _jsonable(v) for k, v in table.items()}


@command()
def active_queues(server: ControlServer, **kwargs: Any) -> list[dict[str, Any]]:
    return [_queue_info(q) for q in server.worker.queues]


def _queue_info(name: str) -> dict[str, Any]:
    return {"name": name,
            "exchange": {"name": name, "type": "direct", "arguments": None, "durable": True,
                         "passive": False, "auto_delete": False, "delivery_mode": None, "no_declare": False},
            "routing_key": name, "queue_arguments": None, "binding_arguments": None,
            "consumer_arguments": None, "durable": True, "exclusive": False, "auto_delete": False,
            "no_ack": False, "alias": None, "bindings": [], "no_declare": None, "expires": None,
            "message_ttl": None, "max_length": None, "max_length_bytes": None, "max_priority": None}


@command()
def stats(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    worker = server.worker
    sup = worker.supervisor
    totals: dict[str, int] = {}

    def add(counts: dict[str, int]) -> None:
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + int(n)

    if sup is not None:
        add(sup.totals)
        for child in _children(server):
            add(child.slot.totals())
        pool: dict[str, Any] = {
            "implementation": "celeriac.worker.supervisor:Supervisor",
            "max-concurrency": len(sup.children), "processes": [c.process.pid for c in _children(server)],
            "max-tasks-per-child": sup.max_tasks or "N/A", "put-guarded-by-semaphore": False,
            "timeouts": [server.app.conf.task_soft_time_limit or 0, server.app.conf.task_time_limit or 0],
            "writes": {"total": sum(totals.values()), "avg": "0.00%", "all": "", "raw": "",
                       "strategy": "fair", "inqueues": {"total": 0, "active": 0}}}
        if sup.autoscale:
            pool["autoscaler"] = {"max": sup.autoscale[0], "min": sup.autoscale[1], "qty": len(sup.children)}
    else:
        for loop in worker.loops:
            add(getattr(loop, "totals", {}))
        pool = {"implementation": f"celeriac.worker:{worker.pool}", "max-concurrency": worker.concurrency,
                "processes": [os.getpid()], "threads": len(worker.loops)}
    prefetch = max(worker.prefetch, 1)
    return {"total": totals, "pid": os.getpid(), "clock": str(server.clock),
            "uptime": int(time.monotonic() - server.started), "pool": pool,
            "broker": _broker_info(server.app.broker_url, server.broker.options),
            "prefetch_count": prefetch * (len(sup.children) if sup is not None else worker.concurrency),
            "rusage": _rusage(), "sw_ident": "celeriac", "sw_ver": __version__}


def _broker_info(url: str, options: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(url)
    transport = parts.scheme or "sqlite"
    host = parts.hostname
    vhost = parts.path.lstrip("/") or None
    if transport.endswith("sqlite") or transport == "memory":
        host, vhost = "localhost", parts.path or parts.netloc
    return {"hostname": host, "userid": parts.username, "virtual_host": vhost, "port": parts.port,
            "insist": False, "ssl": transport in ("rediss", "amqps"), "transport": transport,
            "connect_timeout": 4, "transport_options": {k: _jsonable(v) for k, v in options.items()},
            "login_method": None, "uri_prefix": None, "heartbeat": 120.0,
            "failover_strategy": "round-robin", "alternates": []}


def _rusage() -> dict[str, Any]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {f: getattr(r, f"ru_{f}") for f in ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss",
                                              "minflt", "majflt", "nswap", "inblock", "oublock", "msgsnd",
                                              "msgrcv", "nsignals", "nvcsw", "nivcsw")}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _censor(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":**@")
    return url


# -- control ---------------------------------------------------------------------

@command()
def revoke(server: ControlServer, task_id: Any = None, terminate: bool = False, signal: Any = None,
           **kwargs: Any) -> dict[str, str]:
    ids = [task_id] if isinstance(task_id, str) else [str(t) for t in (task_id or ())]
    if not ids:
        return error("no task id given")
    server.revoke(ids)
    if not terminate:
        logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
        return ok(f"tasks {', '.join(ids)} flagged as revoked")
    signum = wire.signum(signal)
    terminated = _terminate(server, set(ids), signum)
    if not terminated:
        return ok("terminate: tasks unknown")
    return ok(f"terminate: {', '.join(terminated)}")


@command()
def terminate(server: ControlServer, task_id: Any = None, signal: Any = None, **kwargs: Any) -> dict[str, str]:
    return revoke(server, task_id=task_id, terminate=True, signal=signal)


def _terminate(server: ControlServer, ids: set[str], signum: int) -> list[str]:
    found: list[str] = []
    sup = server.worker.supervisor
    if sup is not None:
        for child in _children(server):
            running = child.slot.running()
            if running and running[0] in ids:
                found.append(running[0])
                server.in_pool_thread(functools.partial(_kill_child, sup, child, running[0], signum))
        return found
    for loop in server.worker.loops:
        stop = getattr(loop, "terminate", None)
        for tid in ids:
            if stop is not None and stop(tid, signum):
                found.append(tid)
    if not found and ids & _running_ids(server):
        logger.warning("revoke(terminate=True): the %s pool cannot stop a running task; it was "
                       "flagged as revoked only", server.pool)
    return found


def _running_ids(server: ControlServer) -> set[str]:
    return {h[2][0] for h in _holders(server) if h[2] is not None}


def _kill_child(sup: Any, child: Any, task_id: str, signum: int) -> None:
    """In the supervisor's thread: signal the child if it still runs ``task_id``."""
    running = child.slot.running()
    if child.process.exitcode is not None or not running or running[0] != task_id:
        return
    logger.warning("Terminating %s (signal %d) in process %d", task_id, signum, child.process.pid)
    sup.revoked_terminated[task_id] = signum
    child.slot.term.value = task_id.encode()[:63]
    try:
        os.kill(child.process.pid, signum)
    except ProcessLookupError:
        pass


@command()
def rate_limit(server: ControlServer, task_name: str | None = None, rate_limit: Any = None,
               **kwargs: Any) -> dict[str, str]:
    from ..task import _parse_rate
    try:
        _parse_rate(rate_limit)
    except Exception as exc:
        return error(f"Invalid rate limit string: {exc!r}")
    task = server.app.tasks.get(task_name or "")
    if task is None:
        logger.error("Rate limit attempt for unknown task %s", task_name)
        return error("unknown task")
    task.rate_limit = rate_limit
    server.state.set_task_attrs(task.name or "", rate_limit=rate_limit)
    if not rate_limit:
        logger.info("Rate limits disabled for tasks of type %s", task_name)
        return ok("rate limit disabled successfully")
    logger.info("New rate limit for tasks of type %s: %s.", task_name, rate_limit)
    return ok("new rate limit set successfully")


@command()
def time_limit(server: ControlServer, task_name: str | None = None, hard: float | None = None,
               soft: float | None = None, **kwargs: Any) -> dict[str, str]:
    task = server.app.tasks.get(task_name or "")
    if task is None:
        logger.error("Change time limit attempt for unknown task %s", task_name)
        return error("unknown task")
    task.soft_time_limit, task.time_limit = soft, hard
    server.state.set_task_attrs(task.name or "", soft_time_limit=soft, time_limit=hard)
    logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


@command()
def shutdown(server: ControlServer, msg: str = "Got shutdown from remote", **kwargs: Any) -> dict[str, str]:
    logger.warning(msg)
    server.in_pool_thread(lambda: server.worker.stop(cold=False))
    return ok("shutdown")


@command()
def pool_grow(server: ControlServer, n: int = 1, **kwargs: Any) -> dict[str, str]:
    sup = server.worker.supervisor
    if sup is None:
        return error(f"pool_grow is not supported by the {server.pool} pool")

    def grow() -> None:
        sup.grow(int(n))
        sup.concurrency = len(sup.children)

    server.in_pool_thread(grow)
    return ok("pool will grow")


@command()
def pool_shrink(server: ControlServer, n: int = 1, **kwargs: Any) -> dict[str, str]:
    sup = server.worker.supervisor
    if sup is None:
        return error(f"pool_shrink is not supported by the {server.pool} pool")

    def shrink() -> None:
        sup.shrink(int(n))
        sup.concurrency = len(sup.children)

    server.in_pool_thread(shrink)
    return ok("pool will shrink")


@command()
def autoscale(server: ControlServer, max: int | None = None, min: int | None = None,
              **kwargs: Any) -> dict[str, str]:
    sup = server.worker.supervisor
    if sup is None or max is None:
        return error("Autoscale not enabled")
    high, low = int(max), int(min or 0)
    def apply() -> None:
        sup.autoscale = (high, low)

    server.in_pool_thread(apply)
    return ok(f"autoscale now max={high} min={low}")


@command()
def heartbeat(server: ControlServer, **kwargs: Any) -> None:
    hook = getattr(server.worker, "send_heartbeat", None)  # the events module, when present
    if callable(hook):
        hook()


@command()
def enable_events(server: ControlServer, **kwargs: Any) -> dict[str, str]:
    worker = server.worker
    if getattr(worker, "events", False):
        return ok("task events already enabled")
    hook = getattr(worker, "enable_events", None)
    if callable(hook):
        hook()
    else:
        worker.events = True
    return ok("task events enabled")


@command()
def disable_events(server: ControlServer, **kwargs: Any) -> dict[str, str]:
    worker = server.worker
    hook = getattr(worker, "disable_events", None)
    if callable(hook):
        hook()
    else:
        worker.events = False
    return ok("task events disabled")


@command()
def add_consumer(server: ControlServer, queue: str | None = None, **kwargs: Any) -> dict[str, str]:
    if queue in server.worker.queues:
        return ok(f"already consuming from {queue!r}")
    return error("add_consumer is not supported by celeriac workers yet (restart with -Q)")


@command()
def cancel_consumer(server: ControlServer, queue: str | None = None, **kwargs: Any) -> dict[str, str]:
    return error("cancel_consumer is not supported by celeriac workers yet (restart with -Q)")
