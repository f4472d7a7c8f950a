"""``celeriac demo``: the whole path on the embedded broker, with no server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import click


@click.command()
@click.option("-n", "--tasks", "count", type=click.IntRange(min=10), default=2000, show_default=True,
              help="How many add tasks to send.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes.")
@click.option("--db", help="SQLite file to use [default: a fresh temporary file].")
def demo(count: int, concurrency: int, db: str | None) -> None:
    """Start a worker on the embedded SQLite broker, send tasks, show results and throughput."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=False)
    tmp = tempfile.mkdtemp(prefix="celeriac-demo-")
    path = os.path.abspath(db or os.path.join(tmp, "demo.db"))
    url = f"sqlite:///{path}"
    env = dict(os.environ, CELERIAC_DEMO_URL=url)
    os.environ["CELERIAC_DEMO_URL"] = url
    console.print(f"[bold]celeriac demo[/] — broker and results in [cyan]{path}[/] (no server needed)")
    log_path = os.path.join(tmp, "worker.log")
    log = open(log_path, "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeriac.cli.main", "-A", "celeriac.cli.demo_app", "worker",
         "-c", str(concurrency), "-l", "info"], stdout=log, stderr=subprocess.STDOUT, env=env)
    from . import demo_app
    demo_app.app._reset_connections()
    from .demo_app import add, divide, slow_square
    try:
        t0 = time.perf_counter()
        results = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            sending = progress.add_task("sending ", total=count)
            batch = 500
            for start in range(0, count, batch):
                n = min(batch, count - start)
                results += add.apply_many([(i, i) for i in range(start, start + n)])
                progress.advance(sending, n)
            failing = [divide.delay(1, 0) for _ in range(3)]
            delayed = [slow_square.apply_async((i,), countdown=1) for i in range(5)]
            sent = time.perf_counter()
            done_bar = progress.add_task("running ", total=len(results))
            done = 0
            while done < len(results):
                chunk = results[done:done + 1000]
                from celeriac.result import ResultSet
                ResultSet(chunk, app=demo_app.app).join(timeout=120)
                done += len(chunk)
                progress.update(done_bar, completed=done)
            elapsed = time.perf_counter() - t0
        values = [r.get(timeout=5) for r in results[:5]]
        table = Table(title="results")
        table.add_column("task")
        table.add_column("state")
        table.add_column("result")
        for r, v in zip(results[:5], values, strict=True):
            table.add_row(escape(f"add[{r.id[:8]}]"), r.state, repr(v))
        for f in failing:
            f.get(timeout=30, propagate=False)
            table.add_row(escape(f"divide[{f.id[:8]}]"), f.state, repr(f.result))
        for d in delayed:
            table.add_row(escape(f"slow_square[{d.id[:8]}] (countdown=1)"), "SUCCESS", repr(d.get(timeout=30)))
        console.print(table)
        assert all(r.state == "FAILURE" for r in failing)
        console.print(f"sent {count} tasks in {sent - t0:.2f}s ({count / (sent - t0):,.0f} tasks/s); "
                      f"all done in {elapsed:.2f}s — [bold green]{count / elapsed:,.0f} tasks/s end to end[/] "
                      f"with results stored, {concurrency} worker processes")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        log.close()
        console.print(f"worker stopped cleanly (exit code {code}); its log: {log_path}")
