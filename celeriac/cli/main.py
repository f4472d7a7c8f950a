"""``celeriac [-A app] COMMAND``: worker, call, result, purge, dead-letters, demo."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..exceptions import CeleryError, ImproperlyConfigured, OperationalError
from .appload import AppNotFound, find_app


class Ctx:
    def __init__(self, app_spec: str | None, broker: str | None, backend: str | None,
                 workdir: str | None, quiet: bool, preloaded: Any = None) -> None:
        self.app_spec = app_spec
        self.broker = broker
        self.backend = backend
        self.workdir = workdir
        self.quiet = quiet
        self._app = preloaded

    def app(self, spec: str | None = None) -> Any:
        if self._app is None or spec:
            spec = spec or self.app_spec
            if spec:
                try:
                    self._app = find_app(spec, self.workdir)
                except AppNotFound as exc:
                    fail(f"Unable to load celery application. {exc}")
            else:
                from ..app import Celery
                self._app = Celery("celeriac")
        if self.broker:
            self._app.conf.set_cli(broker_url=self.broker)
            self._app._reset_connections()
        if self.backend:
            self._app.conf.set_cli(result_backend=self.backend)
            self._app._reset_connections()
        return self._app


def fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def guarded(fn: Any) -> Any:
    """Turn our errors into one clear line and a non-zero exit (no traceback wall)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            fail(f"Cannot reach the broker or result backend: {exc}")
        except ImproperlyConfigured as exc:
            fail(f"Configuration error: {exc}")
        except CeleryError as exc:
            fail(str(exc))

    return wrapper


#: Commands defined in other modules, imported when named (or listed by --help): a worker
#: process then never loads what only they need (the demo's tempfile and subprocess, ...).
_LAZY_COMMANDS = {
    "demo": ("celeriac.cli.demo", "demo"),
    "inspect": ("celeriac.cli.control", "inspect"), "control": ("celeriac.cli.control", "control"),
    "status": ("celeriac.cli.control", "status"),
    "beat": ("celeriac.cli.beat", "beat"), "schedule": ("celeriac.cli.beat", "schedule"),
    "events": ("celeriac.cli.events", "events"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _LAZY_COMMANDS:
            mod_name, attr = _LAZY_COMMANDS[cmd_name]
            try:
                module = __import__(mod_name, fromlist=[attr])
            except ImportError:
                return None
            command = getattr(module, attr)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", metavar="MODULE", envvar="CELERIAC_APP",
              help="The application: a module (proj), a package with a celery module, or module:attribute.")
@click.option("-b", "--broker", metavar="URL", help="Broker URL, overriding the app's broker_url.")
@click.option("--result-backend", metavar="URL", help="Result backend URL, overriding result_backend.")
@click.option("--workdir", metavar="DIR", help="Change to this directory before loading the app.")
@click.option("-q", "--quiet", is_flag=True, help="Print less.")
@click.version_option(package_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, broker: str | None, result_backend: str | None,
        workdir: str | None, quiet: bool) -> None:
    """celeriac: a fast, Celery-compatible task queue (embedded SQLite broker by default)."""
    preloaded = ctx.obj if ctx.obj is not None and not isinstance(ctx.obj, Ctx) else None
    ctx.obj = Ctx(app_spec, broker, result_backend, workdir, quiet, preloaded)


def _parse_autoscale(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        parts = [int(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected MAX,MIN (e.g. 10,3), got {value!r}") from None
    high, low = (parts + [0])[:2] if len(parts) > 1 else (parts[0], 0)
    if high < low or high < 1:
        raise click.BadParameter(f"MAX must be >= MIN and >= 1, got {value!r}")
    return high, low


@cli.command()
@click.option("-A", "--app", "app_spec", metavar="MODULE", help="The application (also accepted before 'worker').")
@click.option("-l", "--loglevel", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False),
              help="Logging level.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Number of child processes/threads [default: CPU count].")
@click.option("-P", "--pool", type=click.Choice(["prefork", "processes", "threads", "solo", "asyncio"]),
              help="Pool implementation [default: prefork].")
@click.option("-Q", "--queues", help="Comma-separated list of queues to consume from [default: celery].")
@click.option("-n", "--hostname", help="Node name, e.g. name@%h (%h host, %n short host, %d domain).")
@click.option("-f", "--logfile", help="Write the log here instead of stderr.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), help="Messages each process reserves ahead.")
@click.option("-O", "optimization", type=click.Choice(["default", "fair"]), help="'fair' reserves one task per process.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), help="Replace a child after this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), help="Replace a child above this resident memory (KiB).")
@click.option("--autoscale", help="MAX,MIN processes: grow under backlog, shrink when idle.")
@click.option("--time-limit", type=float, help="Hard time limit per task, seconds (the process is replaced).")
@click.option("--soft-time-limit", type=float, help="Soft time limit per task, seconds (SoftTimeLimitExceeded is raised).")
@click.option("-B", "--beat", is_flag=True, help="Also run the periodic task scheduler in this worker.")
@click.option("-E", "--task-events", "events", is_flag=True, help="Send task events (for monitors).")
@click.option("-s", "--schedule-filename", help="Accepted for Celery compatibility (beat state lives in the broker).")
@click.option("--scheduler", help="Beat scheduler class (dotted path) when -B is given.")
@click.option("--without-gossip", is_flag=True, help="Accepted for Celery compatibility.")
@click.option("--without-mingle", is_flag=True, help="Accepted for Celery compatibility.")
@click.option("--without-heartbeat", is_flag=True, help="Accepted for Celery compatibility.")
@click.pass_obj
@guarded
def worker(obj: Ctx, app_spec: str | None, loglevel: str, concurrency: int | None, pool: str | None,
           queues: str | None, hostname: str | None, logfile: str | None, prefetch_multiplier: int | None,
           optimization: str | None, max_tasks_per_child: int | None, max_memory_per_child: int | None,
           autoscale: str | None, time_limit: float | None, soft_time_limit: float | None, beat: bool,
           events: bool, schedule_filename: str | None, scheduler: str | None, **_: Any) -> None:
    """Start a worker that consumes tasks from the broker."""
    from ..worker.worker import Worker
    app = obj.app(app_spec)
    if time_limit is not None or soft_time_limit is not None:
        from ..task import validate_time_limits
        validate_time_limits("worker", time_limit, soft_time_limit)
        app.conf.set_cli(task_time_limit=time_limit, task_soft_time_limit=soft_time_limit)
    if scheduler:
        app.conf.set_cli(beat_scheduler=scheduler)
    w = Worker(app, hostname=hostname, queues=[q.strip() for q in queues.split(",")] if queues else None,
               concurrency=concurrency, pool=pool, loglevel=loglevel, logfile=logfile,
               prefetch_multiplier=prefetch_multiplier, max_tasks_per_child=max_tasks_per_child,
               max_memory_per_child=max_memory_per_child, autoscale=_parse_autoscale(autoscale),
               beat=beat, quiet=obj.quiet, events=events, optimization=optimization)
    sys.exit(w.start())


@cli.command()
@click.argument("name")
@click.option("-a", "--args", default="[]", help="Positional arguments as JSON, e.g. '[1, 2]'.")
@click.option("-k", "--kwargs", default="{}", help="Keyword arguments as JSON, e.g. '{\"x\": 1}'.")
@click.option("--eta", help="ISO-8601 time to run at.")
@click.option("--countdown", type=float, help="Seconds to wait before running.")
@click.option("--expires", type=float, help="Seconds after which the task is discarded.")
@click.option("--queue", help="Queue to send to.")
@click.option("--priority", type=click.IntRange(0, 9), help="0 (most urgent) to 9.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait with --wait.")
@click.pass_obj
@guarded
def call(obj: Ctx, name: str, args: str, kwargs: str, eta: str | None, countdown: float | None,
         expires: float | None, queue: str | None, priority: int | None, wait: bool, timeout: float) -> None:
    """Send a task by name and print its id."""
    try:
        a, k = json.loads(args), json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(a, list) or not isinstance(k, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    app = obj.app()
    res = app.send_task(name, a, k, eta=eta, countdown=countdown, expires=expires, queue=queue,
                        priority=priority)
    click.echo(res.id)
    if wait:
        value = res.get(timeout=timeout, propagate=False)
        click.echo(f"{res.state}: {value!r}")


@cli.command()
@click.argument("task_id")
@click.option("-t", "--task", help="Task name (informational).")
@click.option("--traceback", "show_tb", is_flag=True, help="Show the traceback of a failed task.")
@click.pass_obj
@guarded
def result(obj: Ctx, task_id: str, task: str | None, show_tb: bool) -> None:
    """Print the state and result of a task."""
    res = obj.app().AsyncResult(task_id)
    if show_tb:
        click.echo(res.traceback or "")
        return
    click.echo(f"{res.state}: {res.result!r}")


@cli.command()
@click.option("-Q", "--queues", help="Comma-separated queues to purge [default: the default queue].")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@guarded
def purge(obj: Ctx, queues: str | None, force: bool) -> None:
    """Delete every waiting message from the queues (cannot be undone)."""
    app = obj.app()
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Purge all waiting messages from {', '.join(names)}?", abort=True)
    total = sum(app.broker.purge(q) for q in names)
    click.echo(f"Purged {total} message{'s' if total != 1 else ''} from {len(names)} known task queue"
               f"{'s' if len(names) != 1 else ''}.")


@cli.group("dead-letters")
def dead_letters() -> None:
    """List or replay messages that could not be run (unknown task, undecodable, rejected)."""


@dead_letters.command("list")
@click.option("--limit", type=int, default=50, show_default=True, help="How many, newest first.")
@click.pass_obj
@guarded
def dead_list(obj: Ctx, limit: int) -> None:
    """Show dead letters with their reason."""
    rows = obj.app().broker.dead_letters(limit)
    if not rows:
        click.echo("No dead letters.")
    for d in rows:
        click.echo(f"{d.id}\t{d.queue}\t{d.task_name}[{d.task_id}]\t{d.reason}")


@dead_letters.command("replay")
@click.argument("dead_id")
@click.pass_obj
@guarded
def dead_replay(obj: Ctx, dead_id: str) -> None:
    """Put a dead letter back on its queue."""
    if not obj.app().broker.replay_dead_letter(dead_id):
        fail(f"No dead letter with id {dead_id}")
    click.echo(f"Replayed {dead_id}.")


def main(argv: list[str] | None = None, app: Any = None) -> None:
    cli.main(args=argv, prog_name="celeriac", obj=app)


if __name__ == "__main__":
    main()
