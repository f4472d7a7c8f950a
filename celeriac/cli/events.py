"""``celeriac -A app events``: watch the workers' events.

``--dump`` prints every event as it arrives, one line each
(``<node> [<time>] <type>: <details>``); ``--json`` prints the events as JSON
lines; without either, a summary of the workers online and of the tasks by state
is printed every ``--freq`` seconds.  Workers send task events with ``-E``
(or after ``celeriac control enable_events``); worker heartbeats always.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import Any

import click

from ..exceptions import CeleryError, ImproperlyConfigured, OperationalError

_SKIP = ("hostname", "utcoffset", "pid", "clock", "timestamp", "type", "local_received", "uuid", "name")


def _when(event: dict[str, Any]) -> str:
    ts = event.get("timestamp")
    if not isinstance(ts, (int, float)):
        return "?"
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="microseconds")


def format_event(event: dict[str, Any], names: dict[str, str]) -> str:
    """One line for ``--dump``; ``names`` remembers task names by id (later events omit them)."""
    type_ = str(event.get("type", "?"))
    head = f"{event.get('hostname', '?')} [{_when(event)}] {type_.replace('-', ' ')}"
    details = [f"{k}={event[k]}" for k in sorted(event) if k not in _SKIP]
    if type_.startswith("task-"):
        uuid = str(event.get("uuid", ""))
        name = event.get("name") or names.get(uuid, "")
        if event.get("name"):
            names[uuid] = str(event["name"])
            while len(names) > 10000:
                names.pop(next(iter(names)))
        details.insert(0, f"{name}[{uuid}]" if name else f"[{uuid}]")
    return f"{head}: {', '.join(details)}" if details else head


def _summary(state: Any) -> str:
    alive = sorted(w.hostname for w in state.alive_workers())
    counts = state.counts_by_state()
    tasks = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none yet"
    return (f"[{datetime.now():%H:%M:%S}] {len(alive)} worker{'s' if len(alive) != 1 else ''} online"
            f"{': ' + ', '.join(alive) if alive else ''}; tasks: {tasks}; events: {state.event_count}")


@click.command()
@click.option("-d", "--dump", is_flag=True, help="Print every event as it arrives.")
@click.option("--json", "as_json", is_flag=True, help="Print every event as one JSON line.")
@click.option("-F", "--freq", "--frequency", "freq", type=float, default=1.0, show_default=True,
              help="Seconds between two summaries (without --dump/--json).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@click.option("--no-wakeup", is_flag=True, help="Do not ask the workers for a heartbeat at start.")
@click.pass_obj
def events(obj: Any, dump: bool, as_json: bool, freq: float, limit: int | None, timeout: float | None,
           no_wakeup: bool) -> None:
    """Watch the events of the workers (heartbeats, and task events of workers run with -E)."""
    try:
        app = obj.app()
        _watch(app, dump, as_json, freq, limit, timeout, not no_wakeup)
    except KeyboardInterrupt:
        pass
    except OperationalError as exc:
        click.echo(f"Error: Cannot reach the broker: {exc}", err=True)
        sys.exit(1)
    except (ImproperlyConfigured, CeleryError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


def _watch(app: Any, dump: bool, as_json: bool, freq: float, limit: int | None, timeout: float | None,
           wakeup: bool) -> None:
    state = app.events.State()
    names: dict[str, str] = {}
    out = sys.stdout
    if not (dump or as_json):
        click.echo(f"-> celeriac events: watching {app.broker_url}; a summary every {freq:g} s (Ctrl-C to stop)")

    def on_event(event: dict[str, Any]) -> None:
        state.event(event)
        if as_json:
            out.write(json.dumps(event, default=repr) + "\n")
        elif dump:
            out.write(format_event(event, names) + "\n")
        out.flush()

    receiver = app.events.Receiver(handlers={"*": on_event})
    stop = threading.Event()
    if timeout is not None:
        def expire() -> None:
            if not stop.wait(timeout):
                receiver.should_stop = True
        threading.Thread(target=expire, daemon=True, name="events-timeout").start()
    printer = None
    if not (dump or as_json):
        def summaries() -> None:
            while not stop.wait(freq):
                click.echo(_summary(state))
        printer = threading.Thread(target=summaries, daemon=True, name="events-summary")
        printer.start()
    try:
        receiver.capture(limit=limit, wakeup=wakeup)
    finally:
        stop.set()
        if printer is not None:
            printer.join(1.0)
            click.echo(_summary(state))


commands = [events]

__all__ = ["commands", "events", "format_event"]
