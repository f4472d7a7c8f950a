"""Issue 3 benchmark: ``async def`` tasks on one ``-P asyncio`` worker, embedded SQLite broker.

    .venv/bin/python bench/bench_async.py [-n 10000] [-c 1000] [--sleep 0.01]

N tasks that each ``await asyncio.sleep(0.01)`` and return a value (results
stored), on one worker process.  Two figures:

* live: the worker is running; the client sends N in bulk and waits for every
  result (the clock runs from the first send to the last result);
* backlog: N are queued first, then the worker starts (clock includes startup).

Celery has no ``async def`` tasks, so there is nothing to compare with.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

APP = """
import asyncio
from celeriac import Celery
app = Celery('bench_async_app', broker={url!r})

@app.task
async def nap(x, seconds):
    await asyncio.sleep(seconds)
    return x

@app.task
def ping():
    return 'pong'
"""


def start_worker(workdir: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=workdir)
    cmd = [sys.executable, "-m", "celeriac.cli.main", "-q", "-A", "bench_async_app", "worker",
           "-P", "asyncio", "-c", str(concurrency), "-l", "warning"]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("-c", "--concurrency", type=int, default=1000)
    ap.add_argument("--sleep", type=float, default=0.01)
    args = ap.parse_args()
    n, sleep = args.n, args.sleep
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-async-")
    url = f"sqlite:///{os.path.join(workdir, 'bench.db')}"
    with open(os.path.join(workdir, "bench_async_app.py"), "w") as f:
        f.write(textwrap.dedent(APP.format(url=url)))
    sys.path.insert(0, workdir)
    from bench_async_app import app, nap, ping  # type: ignore[import-not-found]

    from celeriac.result import ResultSet

    out: dict[str, object] = {"n": n, "sleep_s": sleep, "concurrency": args.concurrency}
    ideal = n * sleep / args.concurrency
    # live: worker running, bulk send, wait for every result
    proc = start_worker(workdir, args.concurrency)
    try:
        ping.delay().get(timeout=60)
        nap.apply_many([(i, sleep) for i in range(200)])  # warm up
        t0 = time.perf_counter()
        results = []
        for start in range(0, n, 1000):
            results += nap.apply_many([(i, sleep) for i in range(start, min(start + 1000, n))])
        sent = time.perf_counter() - t0
        values = ResultSet(results, app=app).join(timeout=600)
        total = time.perf_counter() - t0
        assert values == list(range(n)), "wrong results"
    finally:
        stop_worker(proc)
    out.update(live_total_s=total, live_per_s=n / total, send_s=sent)
    # backlog: queue first, then start the worker
    results = []
    for start in range(0, n, 1000):
        results += nap.apply_many([(i, sleep) for i in range(start, min(start + 1000, n))])
    t0 = time.perf_counter()
    proc = start_worker(workdir, args.concurrency)
    try:
        values = ResultSet(results, app=app).join(timeout=600)
        backlog = time.perf_counter() - t0
        assert values == list(range(n)), "wrong results"
    finally:
        stop_worker(proc)
    out.update(backlog_total_s_incl_startup=backlog, backlog_per_s=n / backlog)
    app.close()
    print(f"celeriac -P asyncio -c {args.concurrency}, one worker process, embedded SQLite broker")
    print(f"  {n:,} async tasks, each awaiting asyncio.sleep({sleep}) (ideal {ideal:.2f}s at this concurrency)")
    print(f"  live (bulk send + all results):   {total:7.2f} s  {n / total:>8,.0f} tasks/s  (send {sent:.2f} s)")
    print(f"  backlog (incl. worker startup):   {backlog:7.2f} s  {n / backlog:>8,.0f} tasks/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
