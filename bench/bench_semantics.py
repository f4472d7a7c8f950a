"""Issue 3 benchmark: task semantics on the embedded SQLite broker.

    .venv/bin/python bench/bench_semantics.py [-n 1000] [--runs 3] [--calls 200000]

Two figures:

* retry once: N tasks that each ``raise self.retry(countdown=0)`` on their first
  run and return on the second, on one worker with 2 prefork processes; the clock
  runs from the first send to the last result (so 2N executions, N retry
  messages published by the worker).  The same N tasks without a retry are timed
  alongside, as a baseline.
* middleware: the per-task cost of the worker's middleware chain
  (``celeriac.worker.execute.build_chain`` with the default middleware: logging,
  results, signals, hooks; no receivers connected, INFO logging off), run
  in-process on a fresh ``ExecContext`` per task, against calling the bare
  function.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

APP = """
from celeriac import Celery
app = Celery('bench_sem_app', broker={url!r})

@app.task(bind=True)
def retry_once(self, i):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return i

@app.task
def plain(i):
    return i
"""


def start_worker(workdir: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=workdir)
    cmd = [sys.executable, "-m", "celeriac.cli.main", "-q", "-A", "bench_sem_app", "worker",
           "-c", str(concurrency), "-l", "warning"]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_retries(n: int, runs: int, concurrency: int) -> list[dict[str, float]]:
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-sem-")
    url = f"sqlite:///{os.path.join(workdir, 'bench.db')}"
    with open(os.path.join(workdir, "bench_sem_app.py"), "w") as f:
        f.write(textwrap.dedent(APP.format(url=url)))
    sys.path.insert(0, workdir)
    from bench_sem_app import plain, retry_once  # type: ignore[import-not-found]

    from celeriac.result import ResultSet

    out = []
    proc = start_worker(workdir, concurrency)
    try:
        plain.delay(-1).get(timeout=60)  # the worker is up
        for _ in range(runs):
            row: dict[str, float] = {}
            for label, task in (("plain", plain), ("retry_once", retry_once)):
                t0 = time.perf_counter()
                results = task.apply_many([(i,) for i in range(n)])
                values = ResultSet(results).get(timeout=300)
                row[label] = time.perf_counter() - t0
                assert values == list(range(n)), f"{label}: wrong results"
            out.append(row)
    finally:
        stop_worker(proc)
    return out


def bench_middleware(calls: int) -> dict[str, float]:
    from celeriac import Celery
    from celeriac.task import Context
    from celeriac.worker.execute import ExecContext, build_chain, middleware_for

    app = Celery("bench_mw", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)

    def add(x: int, y: int) -> int:
        return x + y

    task = app.task(name="bench.add")(add)
    chain = build_chain(middleware_for(app))
    ids = [str(uuid.uuid4()) for _ in range(1000)]

    def through_chain() -> float:
        t0 = time.perf_counter()
        for i in range(calls):
            req = Context(id=ids[i % 1000], task="bench.add", args=(i, 1), kwargs={}, retries=0,
                          delivery_info={"routing_key": "celery"}, children=[], is_eager=False)
            ctx = ExecContext(app, task, req, None, "bench@host")
            chain(ctx)
        return (time.perf_counter() - t0) / calls

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(calls):
            add(i, 1)
        return (time.perf_counter() - t0) / calls

    chain_s = min(through_chain() for _ in range(3))
    bare_s = min(bare() for _ in range(3))
    app.close()
    return {"chain_us": chain_s * 1e6, "bare_us": bare_s * 1e6, "overhead_us": (chain_s - bare_s) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-c", "--concurrency", type=int, default=2)
    ap.add_argument("--calls", type=int, default=200000)
    args = ap.parse_args()
    mw = bench_middleware(args.calls)
    runs = bench_retries(args.n, args.runs, args.concurrency)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.platform()}, "
                                 f"Python {platform.python_version()}",
                      "n": args.n, "concurrency": args.concurrency, "retry_runs": runs,
                      "middleware": mw}, indent=2))
    for i, row in enumerate(runs, 1):
        print(f"run {i}: {args.n} tasks retrying once: {row['retry_once']:.2f} s "
              f"({2 * args.n / row['retry_once']:.0f} executions/s); "
              f"without retry: {row['plain']:.2f} s")
    print(f"middleware chain: {mw['chain_us']:.2f} us/task; bare call {mw['bare_us']:.3f} us; "
          f"overhead {mw['overhead_us']:.2f} us/task")


if __name__ == "__main__":
    main()
