"""CPU per task of each party in the end-to-end-with-results phase alone.

    redis-server --port 6391 --save '' --appendonly no --daemonize yes
    .venv/bin/python bench/probe_e2e.py --broker redis://127.0.0.1:6391/0 -n 20000 [--latency-n 500]

Starts a celeriac worker through the CLI (``-c 2``, prefork, prefetch 4, log level
warning, as ``measure.py`` does), warms it up, then sends ``n`` single ``add.delay(i, i)``
while it runs and joins every result. Prints tasks/s and CPU µs per task of the worker's
main process, its children, the client and Redis (``INFO cpu``; use a private server, the
figure is the whole server's), and Redis commands per task (``INFO commandstats``), as
one JSON line (context switches per task too; Redis's when PROBE_REDIS_PID names its process). ``--latency-n`` adds the p50/p99 of sequential ``delay().get()`` round trips.
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
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, which: slice = slice(11, 13)) -> float:
    """utime + stime of one process, seconds (``which``: slice(11, 12) utime alone)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[which]) / TICK


def switches(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of a process."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.endswith("ctxt_switches:", 0, line.find(":") + 1):
                    total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def redis_stats(url: str) -> tuple[float, float, dict[str, tuple[int, int]]]:
    """(Redis used_cpu_sys + used_cpu_user seconds, used_cpu_sys, {command: (calls, usec)})."""
    import socket
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"INFO all\r\n")
        buf = b""
        while True:
            buf += s.recv(1 << 20)
            head, _, rest = buf.partition(b"\r\n")
            if head and len(rest) >= int(head[1:]) + 2:
                break
    text = rest.decode()
    cpu = sys_cpu = 0.0
    calls: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            cpu += float(line.split(":")[1])
            if line.startswith("used_cpu_sys:"):
                sys_cpu = float(line.split(":")[1])
        elif line.startswith("cmdstat_"):
            name, _, rest = line[8:].partition(":")
            fields = dict(f.split("=") for f in rest.split(","))
            calls[name] = (int(fields["calls"]), int(fields["usec"]))
    return cpu, sys_cpu, calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="redis://127.0.0.1:6391/0")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--latency-n", type=int, default=0)
    ap.add_argument("--prefix", default="probe.")
    args = ap.parse_args()
    env = dict(os.environ, BENCH_IMPL="celeriac", BENCH_BROKER=args.broker, BENCH_BACKEND=args.broker,
               BENCH_PREFIX=args.prefix, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    sys.path.insert(0, HERE)
    from bench_app import add, app

    from celeriac.result import ResultSet

    cmd = [sys.executable, "-m", "celeriac.cli.main", "-q", "-A", "bench_app", "worker", "-c", "2", "-l", "warning"]
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out: dict[str, object] = {"n": args.n}
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode() if proc.stderr else "worker exited")
            try:
                add.delay(1, 1).get(timeout=2)
                break
            except Exception:
                if time.time() > deadline:
                    raise
        ResultSet([add.delay(i, i) for i in range(2000)], app=app).join(timeout=60)   # warm up
        time.sleep(0.5)
        kids = children(proc.pid)
        n = args.n
        main0, kids0, client0 = proc_cpu(proc.pid), [proc_cpu(k) for k in kids], time.process_time()
        ksys0, csys0 = [proc_cpu(k, slice(12, 13)) for k in kids], os.times().system
        rpid = int(os.environ.get("PROBE_REDIS_PID", "0"))
        parties = {"worker_children": kids, "client": [os.getpid()], "redis": [rpid] if rpid else []}
        sw0 = {k: sum(switches(p) for p in v) for k, v in parties.items()}
        rcpu0, rsys0, rcalls0 = redis_stats(args.broker)
        t0 = time.perf_counter()
        results = [add.delay(i, i) for i in range(n)]
        t_sent, client_sent = time.perf_counter(), time.process_time()
        values = ResultSet(results, app=app).join(timeout=600)
        elapsed = time.perf_counter() - t0
        client1 = time.process_time()
        rcpu1, rsys1, rcalls1 = redis_stats(args.broker)
        main1, kids1 = proc_cpu(proc.pid), [proc_cpu(k) for k in kids]
        ksys1, csys1 = [proc_cpu(k, slice(12, 13)) for k in kids], os.times().system
        sw1 = {k: sum(switches(p) for p in v) for k, v in parties.items()}
        assert values == [2 * i for i in range(n)], "wrong results"
        us = 1e6 / n
        out.update({
            "tasks_per_s": round(n / elapsed),
            "send_seconds": round(t_sent - t0, 3),
            "join_seconds": round(elapsed - (t_sent - t0), 3),
            "cpu_us_per_task": {
                "worker_main": round((main1 - main0) * us, 1),
                "worker_children": round((sum(kids1) - sum(kids0)) * us, 1),
                "worker_children_kernel": round((sum(ksys1) - sum(ksys0)) * us, 1),
                "client": round((client1 - client0) * us, 1),
                "client_kernel": round((csys1 - csys0) * us, 1),
                "client_sending": round((client_sent - client0) * us, 1),
                "client_joining": round((client1 - client_sent) * us, 1),
                "redis": round((rcpu1 - rcpu0) * us, 1),
                "redis_kernel": round((rsys1 - rsys0) * us, 1),
            },
        })
        out["context_switches_per_task"] = {k: round((sw1[k] - sw0[k]) / n, 2) for k in sw0 if parties[k]}
        per = {k: (v[0] - rcalls0.get(k, (0, 0))[0], v[1] - rcalls0.get(k, (0, 0))[1]) for k, v in rcalls1.items()}
        per["info"] = (per.get("info", (1, 0))[0] - 1, 0)      # the INFO itself
        out["redis_calls_per_task"] = round(sum(c for c, _ in per.values()) / n, 2)
        out["redis_commands"] = {k: [round(c / n, 2), round(u / n, 1)] for k, (c, u) in
                                 sorted(per.items(), key=lambda kv: -kv[1][1]) if c}   # [calls, usec] per task
        if args.latency_n:
            lat = []
            for _ in range(args.latency_n):
                t1 = time.perf_counter()
                add.delay(1, 2).get(timeout=10)
                lat.append((time.perf_counter() - t1) * 1000)
            lat.sort()
            out["rtt_p50_ms"] = round(statistics.median(lat), 3)
            out["rtt_p99_ms"] = round(lat[int(len(lat) * 0.99) - 1], 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
