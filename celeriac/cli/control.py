"""``celeriac inspect COMMAND``, ``celeriac control COMMAND`` and ``celeriac status``.

The output follows Celery's CLI: one ``->  <node>: OK`` line per node as its
reply arrives, the reply indented below it, then ``N node(s) online.``; with
``--json`` only the replies as one JSON object.  No reply at all within the
timeout: ``Error: No nodes replied within time constraint`` and exit code 69.
"""

from __future__ import annotations

import functools
import json as jsonlib
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import click

from ..exceptions import CeleryError, ImproperlyConfigured, OperationalError

EX_UNAVAILABLE = 69
INSPECT_COMMANDS = ("ping", "active", "reserved", "scheduled", "registered", "stats", "revoked",
                    "active_queues", "conf", "clock", "report", "query_task")
#: control command -> positional arguments (name, type); a trailing ``*`` name takes the rest
CONTROL_COMMANDS: dict[str, list[tuple[str, Callable[[str], Any]]]] = {
    "revoke": [("*task_id", str)],
    "terminate": [("signal", str), ("*task_id", str)],
    "rate_limit": [("task_name", str), ("rate_limit", str)],
    "time_limit": [("task_name", str), ("soft", float), ("hard", float)],
    "shutdown": [],
    "pool_grow": [("n", int)],
    "pool_shrink": [("n", int)],
    "autoscale": [("max", int), ("min", int)],
    "heartbeat": [],
    "enable_events": [],
    "disable_events": [],
    "add_consumer": [("queue", str)],
    "cancel_consumer": [("queue", str)],
}


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            _fail(f"Cannot reach the broker: {exc}")
        except ImproperlyConfigured as exc:
            _fail(f"Configuration error: {exc}")
        except (CeleryError, ValueError) as exc:
            _fail(str(exc))

    return wrapper


# -- Celery's output --------------------------------------------------------------

def _pretty(value: Any) -> tuple[str, str]:
    if isinstance(value, list):
        if not value:
            return "OK", "- empty -"
        return "OK", "\n".join(f"* {item}" for item in value)
    if isinstance(value, dict):
        if "ok" in value:
            return "OK", textwrap.indent(_pretty(value["ok"])[1], "    ")
        if "error" in value:
            return "ERROR", textwrap.indent(_pretty(value["error"])[1], "    ")
        return "OK", jsonlib.dumps(value, sort_keys=True, indent=4, default=repr)
    if isinstance(value, str):
        return "OK", value
    import pprint
    return "OK", pprint.pformat(value)


def _say_reply(reply: dict[str, Any], show_reply: bool = True) -> None:
    node = next(iter(reply))
    status, text = _pretty(reply[node])
    click.echo(f"->  {node}: {status}")
    if show_reply and text:
        click.echo(textwrap.indent(text, "    "))


def _destination(value: str | None) -> list[str] | None:
    return [d.strip() for d in value.split(",") if d.strip()] if value else None


def _finish(replies: Any, as_json: bool, quiet: bool) -> None:
    if not replies:
        _fail("No nodes replied within time constraint", EX_UNAVAILABLE)
    if as_json:
        click.echo(jsonlib.dumps(replies, default=repr))
        return
    if not quiet:
        n = len(replies)
        click.echo(f"\n{n} {'node' if n == 1 else 'nodes'} online.")


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON.")(fn)
    fn = click.option("-d", "--destination", help="Comma-separated node names (default: all).")(fn)
    fn = click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                      help="Seconds to wait for a reply.")(fn)
    return fn


def _app(obj: Any) -> Any:
    return obj.app()


# -- commands ----------------------------------------------------------------------

@click.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
@click.argument("command", type=click.Choice(INSPECT_COMMANDS))
@click.argument("args", nargs=-1)
@_options
@click.pass_obj
@_guarded
def inspect(obj: Any, command: str, args: tuple[str, ...], timeout: float, destination: str | None,
            as_json: bool) -> None:
    """Ask the workers: ping, active, reserved, scheduled, registered, stats, revoked,
    active_queues, conf, clock, report, query_task ID..."""
    app = _app(obj)
    callback = None if as_json else _say_reply
    insp = app.control.inspect(timeout=timeout, destination=_destination(destination), callback=callback)
    arguments: dict[str, Any] = {}
    if command == "registered":
        arguments["taskinfoitems"] = list(args)
    elif command == "query_task":
        arguments["ids"] = list(args)
    elif command == "conf" and args:
        arguments["with_defaults"] = args[0].lower() in ("1", "true", "yes", "with_defaults")
    replies = insp._request(command, **arguments)
    _finish(replies, as_json, getattr(obj, "quiet", False))


def _control_arguments(command: str, args: tuple[str, ...]) -> dict[str, Any]:
    spec = CONTROL_COMMANDS[command]
    rest = list(args)
    out: dict[str, Any] = {}
    for name, typ in spec:
        if name.startswith("*"):
            out[name[1:]] = [typ(a) for a in rest]
            rest = []
            break
        if not rest:
            break
        try:
            out[name] = typ(rest.pop(0))
        except ValueError:
            raise click.BadParameter(f"{name} must be {typ.__name__}") from None
    if rest:
        names = " ".join(n.lstrip("*") for n, _ in spec) or "no arguments"
        raise click.UsageError(f"Command {command!r} takes arguments: {names}")
    return out


@click.command(context_settings={"allow_extra_args": True})
@click.argument("command", type=click.Choice(sorted(CONTROL_COMMANDS)))
@click.argument("args", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also stop the task if it is running.")
@click.option("-s", "--signal", "signal_name", default=None,
              help="revoke --terminate / terminate: the signal to send (default SIGTERM).")
@_options
@click.pass_obj
@_guarded
def control(obj: Any, command: str, args: tuple[str, ...], terminate: bool, signal_name: str | None,
            timeout: float, destination: str | None, as_json: bool) -> None:
    """Tell the workers: revoke ID... [--terminate --signal SIGKILL], terminate SIGNAL ID...,
    rate_limit TASK RATE, time_limit TASK SOFT [HARD], shutdown, pool_grow N, pool_shrink N, ..."""
    from ..control import wire
    app = _app(obj)
    arguments = _control_arguments(command, args)
    dest = _destination(destination)
    if command in ("revoke", "terminate"):
        ids = arguments.get("task_id") or []
        if not ids:
            raise click.UsageError(f"{command} needs at least one task id")
        sig = arguments.get("signal") or signal_name or "SIGTERM"
        wire.signum(sig)  # a bad signal name fails before anything is sent
        if dest is None:
            app.broker.store_revoked(ids, wire.REVOKE_EXPIRES)
        arguments = {"task_id": ids if len(ids) > 1 else ids[0],
                     "terminate": terminate or command == "terminate", "signal": sig}
        command = "revoke"
    elif command == "rate_limit":
        from ..task import _parse_rate
        _parse_rate(arguments.get("rate_limit"))
    callback = None if as_json else _say_reply
    replies = app.control.broadcast(command, arguments=arguments, destination=dest, reply=True,
                                    timeout=timeout, callback=callback)
    _finish(replies, as_json, True)


@click.command()
@_options
@click.pass_obj
@_guarded
def status(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """List the workers that answer a ping."""
    app = _app(obj)
    callback = None if as_json else functools.partial(_say_reply, show_reply=False)
    replies = app.control.inspect(timeout=timeout, destination=_destination(destination),
                                  callback=callback).ping()
    _finish(replies, as_json, getattr(obj, "quiet", False))


commands = [inspect, control, status]
