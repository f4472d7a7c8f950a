"""``celeriac beat`` and ``celeriac schedule list|add|remove|enable|disable``."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .main import Ctx


def guarded(fn: Any) -> Any:
    """``main.guarded``, looked up at call time (main imports this module while it loads)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .main import guarded as main_guarded
        return main_guarded(fn)(*args, **kwargs)

    return wrapper


@click.command()
@click.option("-A", "--app", "app_spec", metavar="MODULE", help="The application (also accepted before 'beat').")
@click.option("-l", "--loglevel", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False),
              help="Logging level.")
@click.option("-S", "--scheduler", help="Scheduler class (dotted path); Celery's and django-celery-beat's "
              "names map to celeriac's store-backed scheduler.")
@click.option("--max-interval", type=click.FloatRange(min=0.01), help="Longest sleep between passes, seconds.")
@click.option("-s", "--schedule", "schedule_filename",
              help="Accepted for Celery compatibility (beat state lives in the broker's store).")
@click.option("-f", "--logfile", help="Write the log here instead of stderr.")
@click.option("--pidfile", help="Accepted for Celery compatibility.")
@click.pass_obj
@guarded
def beat(obj: Ctx, app_spec: str | None, loglevel: str, scheduler: str | None, max_interval: float | None,
         schedule_filename: str | None, logfile: str | None, pidfile: str | None) -> None:
    """Send periodic tasks on schedule (run several for high availability: each tick is sent once)."""
    from ..beat import Beat
    from ..worker.logs import setup_logging
    app = obj.app(app_spec)
    if scheduler:
        app.conf.set_cli(beat_scheduler=scheduler)
    setup_logging(app, loglevel, logfile)
    service = Beat(app, max_interval=max_interval, quiet=obj.quiet, loglevel=loglevel, logfile=logfile)
    sys.exit(service.run())


@click.group()
def schedule() -> None:
    """List and change the entries of a running beat (no restart needed)."""


def _store(obj: Ctx) -> Any:
    from ..beat import ScheduleStore
    return ScheduleStore(obj.app())


def _json_arg(value: str, name: str, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{name} must be JSON: {exc}") from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{name} must be a JSON {'list' if kind is list else 'object'}")
    return parsed


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@guarded
def schedule_list(obj: Ctx, as_json: bool) -> None:
    """Show every entry with its next and last run."""
    with _store(obj) as store:
        entries = store.list()
    if as_json:
        click.echo(json.dumps([{
            "name": e.name, "task": e.task, "schedule": e.schedule_dict, "args": e.args, "kwargs": e.kwargs,
            "options": e.options, "enabled": e.enabled, "source": e.source,
            "next_run": e.next_run_at.isoformat(),
            "last_run": e.last_run_at.isoformat() if e.last_run_at else None,
            "total_run_count": e.total_run_count,
        } for e in entries], indent=2, default=str))
        return
    if not entries:
        click.echo("No schedule entries.")
        return
    for e in entries:
        last = f"{e.last_run_at:%Y-%m-%d %H:%M:%S}" if e.last_run_at else "never"
        state = "enabled" if e.enabled else "disabled"
        click.echo(f"{e.name}\t{state}\t{e.task}\t{e.schedule!r}\tnext={e.next_run_at:%Y-%m-%d %H:%M:%S}Z"
                   f"\tlast={last}\truns={e.total_run_count}\t{e.source}")


@schedule.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--every", type=click.FloatRange(min=0, min_open=True), help="Interval in seconds.")
@click.option("--cron", help="Crontab line: 'minute hour day_of_month month_of_year day_of_week'.")
@click.option("--solar", help="EVENT,LAT,LON, e.g. sunrise,55.75,37.62.")
@click.option("--tz", help="Time zone of the crontab fields [default: the app's timezone].")
@click.option("--relative", is_flag=True, help="Round --every down to its resolution (Celery's relative).")
@click.option("-a", "--args", default="[]", help="Positional arguments as JSON.")
@click.option("-k", "--kwargs", default="{}", help="Keyword arguments as JSON.")
@click.option("--queue", help="Queue to send to.")
@click.option("--priority", type=click.IntRange(0, 9), help="0 (most urgent) to 9.")
@click.option("--expires", type=float, help="Seconds after sending when the task is discarded.")
@click.option("--options", "options_json", default="{}", help="More send options as a JSON object.")
@click.option("--disabled", is_flag=True, help="Add it disabled.")
@click.option("--replace", is_flag=True, help="Replace an entry of the same name (change it).")
@click.pass_obj
@guarded
def schedule_add(obj: Ctx, name: str, task: str, every: float | None, cron: str | None, solar: str | None,
                 tz: str | None, relative: bool, args: str, kwargs: str, queue: str | None,
                 priority: int | None, expires: float | None, options_json: str, disabled: bool,
                 replace: bool) -> None:
    """Add (or with --replace, change) an entry; a running beat picks it up within a second."""
    from .. import schedules
    if sum(x is not None for x in (every, cron, solar)) != 1:
        raise click.UsageError("give exactly one of --every, --cron and --solar")
    sched: Any
    if every is not None:
        sched = schedules.schedule(every, relative=relative, tz=tz)
    elif cron is not None:
        sched = schedules.crontab.from_string(cron, tz=tz)
    else:
        parts = (solar or "").split(",")
        if len(parts) != 3:
            raise click.BadParameter("--solar takes EVENT,LAT,LON")
        try:
            sched = schedules.solar(parts[0].strip(), float(parts[1]), float(parts[2]), tz=tz)
        except ValueError as exc:
            raise click.BadParameter(f"--solar: {exc}") from None
    options = _json_arg(options_json, "--options", dict)
    for key, value in (("queue", queue), ("priority", priority), ("expires", expires)):
        if value is not None:
            options[key] = value
    with _store(obj) as store:
        entry = store.add(name, task, sched, _json_arg(args, "--args", list), _json_arg(kwargs, "--kwargs", dict),
                          options, enabled=not disabled, replace=replace)
    click.echo(f"{'Replaced' if replace else 'Added'} {entry.name}: {entry.task} {entry.schedule!r}, "
               f"next run {entry.next_run_at:%Y-%m-%d %H:%M:%S} UTC{'' if entry.enabled else ' (disabled)'}")


@schedule.command("remove")
@click.argument("name")
@click.pass_obj
@guarded
def schedule_remove(obj: Ctx, name: str) -> None:
    """Delete an entry (an entry of beat_schedule comes back when a beat starts)."""
    with _store(obj) as store:
        store.remove(name)
    click.echo(f"Removed {name}.")


@schedule.command("enable")
@click.argument("name")
@click.pass_obj
@guarded
def schedule_enable(obj: Ctx, name: str) -> None:
    """Enable an entry; its next run is its first tick from now."""
    with _store(obj) as store:
        entry = store.enable(name)
    click.echo(f"Enabled {name}; next run {entry.next_run_at:%Y-%m-%d %H:%M:%S} UTC.")


@schedule.command("disable")
@click.argument("name")
@click.pass_obj
@guarded
def schedule_disable(obj: Ctx, name: str) -> None:
    """Disable an entry (it stays in the store)."""
    with _store(obj) as store:
        store.disable(name)
    click.echo(f"Disabled {name}.")


commands = [beat, schedule]
