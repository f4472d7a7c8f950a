"""Run one implementation (celery or celeriac) through the standard workload; print JSON.

    python bench/measure.py --impl celeriac --broker sqlite:////tmp/b.db -n 20000

The same code drives both implementations: celeriac speaks Celery's API.  The
worker is started through each project's own CLI with 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_kib(pid: int, field: str = "VmRSS:") -> int:
    """Resident memory of a process and its children (KiB): RSS (shared pages counted in
    every process) or, with field="Pss:", the proportional share (shared pages split)."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status" if field == "VmRSS:" else f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def start_worker(impl: str, env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    if impl == "celery":
        exe = os.path.join(os.path.dirname(sys.executable), "celery")
        cmd = [exe, "-A", "bench_app", "worker", "-c", str(concurrency), "-l", "warning", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]
    else:
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-q", "-A", "bench_app", "worker", "-c", str(concurrency),
               "-l", "warning"]
    return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(app, proc: subprocess.Popen[bytes], add) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            add.delay(1, 1).get(timeout=2)
            return
        except Exception:
            continue
    raise SystemExit("worker did not start")


def drain(app, queue: str = "celery", timeout: float = 300) -> None:
    """Wait until the queue is empty (for tasks without results)."""
    deadline = time.time() + timeout
    broker = getattr(app, "broker", None)
    if broker is not None and hasattr(broker, "stats"):
        while time.time() < deadline:
            s = broker.stats(queue)
            if s.ready + s.leased + s.delayed == 0:
                return
            time.sleep(0.002)
        raise SystemExit("queue did not drain")
    import redis  # Celery on Redis: the queue lists and kombu's unacked hash
    r = redis.Redis.from_url(os.environ["BENCH_BROKER"])
    prefix = os.environ.get("BENCH_PREFIX", "")
    keys = [prefix + queue + suffix for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169")]
    while time.time() < deadline:
        pipe = r.pipeline()
        for key in keys:
            pipe.llen(key)
        pipe.hlen(prefix + "unacked")
        if sum(pipe.execute()) == 0:
            r.close()
            return
        time.sleep(0.002)
    r.close()
    raise SystemExit("queue did not drain")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["celery", "celeriac"], required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--backend", default="")
    ap.add_argument("--prefix", default="")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--latency-n", type=int, default=500)
    ap.add_argument("-c", "--concurrency", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, BENCH_IMPL=args.impl, BENCH_BROKER=args.broker, BENCH_BACKEND=args.backend,
               BENCH_PREFIX=args.prefix, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    sys.path.insert(0, HERE)
    import bench_app
    from bench_app import add, add_noresult, app

    n = args.n
    out: dict[str, object] = {"impl": args.impl, "broker": args.broker, "n": n}

    # 1. enqueue, single calls (no worker running)
    t0 = time.perf_counter()
    for i in range(n):
        add_noresult.delay(i, i)
    out["enqueue_single_per_s"] = n / (time.perf_counter() - t0)
    # 2. bulk enqueue (celeriac only: Celery has no bulk send API)
    if args.impl == "celeriac":
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            add_noresult.apply_many([(i, i) for i in range(start, min(start + 1000, n))])
        out["enqueue_bulk_per_s"] = n / (time.perf_counter() - t0)
    # 3. start the worker; drain the 2n tasks already queued (no results) as a throughput figure
    proc = start_worker(args.impl, env, args.concurrency)
    try:
        t0 = time.perf_counter()
        wait_ready(app, proc, add)
        drain(app)
        backlog = 2 * n if args.impl == "celeriac" else n
        out["drain_backlog_per_s_incl_startup"] = backlog / (time.perf_counter() - t0)
        time.sleep(1.0)
        out["idle_worker_rss_kib"] = rss_kib(proc.pid)
        out["idle_worker_pss_kib"] = rss_kib(proc.pid, "Pss:")
        # 4. end to end without results: send n (single calls) while the worker runs, until drained
        t0 = time.perf_counter()
        for i in range(n):
            add_noresult.delay(i, i)
        drain(app)
        out["e2e_noresult_per_s"] = n / (time.perf_counter() - t0)
        # 5. end to end with results: send n, wait for every result
        t0 = time.perf_counter()
        results = [add.delay(i, i) for i in range(n)]
        values = _collect(app, results, args.impl)
        out["e2e_results_per_s"] = n / (time.perf_counter() - t0)
        assert values == [2 * i for i in range(n)], "wrong results"
        # 5b. end to end with results, bulk send (celeriac's apply_many; Celery has none)
        if args.impl == "celeriac":
            t0 = time.perf_counter()
            results = []
            for start in range(0, n, 1000):
                results += add.apply_many([(i, i) for i in range(start, min(start + 1000, n))])
            values = _collect(app, results, args.impl)
            out["e2e_results_bulk_per_s"] = n / (time.perf_counter() - t0)
            assert values == [2 * i for i in range(n)], "wrong results"
        # 6. round-trip latency
        lat = []
        for _ in range(args.latency_n):
            t1 = time.perf_counter()
            add.delay(1, 2).get(timeout=10)
            lat.append((time.perf_counter() - t1) * 1000)
        lat.sort()
        out["rtt_p50_ms"] = statistics.median(lat)
        out["rtt_p99_ms"] = lat[int(len(lat) * 0.99) - 1]
        out["busy_worker_rss_kib"] = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(out))
    _ = bench_app


def _collect(app, results, impl: str) -> list[int]:
    if impl == "celeriac":
        from celeriac.result import ResultSet
        return ResultSet(results, app=app).join(timeout=600)
    from celery.result import ResultSet as CResultSet
    return CResultSet(results, app=app).join_native(timeout=600)


if __name__ == "__main__":
    main()
