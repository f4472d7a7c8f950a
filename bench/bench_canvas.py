"""Issue 5 benchmark: a 10,000-member group and a 1,000-header chord, time to finish.

    .venv/bin/python bench/bench_canvas.py [--group 10000] [--chord 1000] [--runs 3]

Three configurations in one run: Celery 5 on Redis (from .venv-celery at the repository
root, created if missing), celeriac on the same Redis, and celeriac on the embedded SQLite
broker.  The same code drives all three (bench/bench_canvas_app.py imports Celery or celeriac
by BENCH_IMPL); each uses its own CLI worker with 2 prefork processes.  A run is timed from
the first send to the last result read by the client (``GroupResult.get()`` /
``chord(...)(body).get()``); the best of ``--runs`` is reported.
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
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
from celery_env import celery_python  # noqa: E402  (bench/ is on sys.path when run as a script)

# -- one implementation, in its own interpreter ----------------------------------------------

def start_worker(impl: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if impl == "celery":
        cmd = [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "bench_canvas_app", "worker",
               "-c", "2", "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    else:
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-q", "-A", "bench_canvas_app", "worker", "-c", "2",
               "-l", "warning"]
    return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def measure(impl: str, broker: str, prefix: str, n_group: int, n_chord: int, runs: int) -> dict[str, object]:
    env = dict(os.environ, BENCH_IMPL=impl, BENCH_BROKER=broker, BENCH_BACKEND=broker, BENCH_PREFIX=prefix,
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    sys.path.insert(0, HERE)
    from bench_canvas_app import add, chord, group, tsum

    proc = start_worker(impl, env)
    out: dict[str, object] = {"impl": impl, "broker": broker.split("://")[0], "group": n_group, "chord": n_chord}
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                add.delay(1, 1).get(timeout=2)
                break
            except Exception as exc:
                if time.time() > deadline:
                    proc.kill()
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise SystemExit(f"worker did not start: {exc!r}\n{err}") from None
        group_times, send_times, chord_times = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = group(add.s(i, i) for i in range(n_group))()
            send_times.append(time.perf_counter() - t0)
            values = res.get(timeout=900)
            group_times.append(time.perf_counter() - t0)
            assert values == [2 * i for i in range(n_group)], "wrong group results"
            t0 = time.perf_counter()
            total = chord(add.s(i, i) for i in range(n_chord))(tsum.s()).get(timeout=900)
            chord_times.append(time.perf_counter() - t0)
            assert total == n_chord * (n_chord - 1), "wrong chord result"
        out.update(group_s=min(group_times), group_send_s=min(send_times), chord_s=min(chord_times),
                   group_all=group_times, chord_all=chord_times)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


# -- the three configurations, side by side ---------------------------------------------------

def run(python: str, impl: str, broker: str, args: argparse.Namespace) -> dict[str, float]:
    prefix = f"benchcv{uuid.uuid4().hex[:6]}:" if broker.startswith("redis") else ""
    cmd = [python, os.path.abspath(__file__), "--impl", impl, "--broker", broker, "--prefix", prefix,
           "--group", str(args.group), "--chord", str(args.chord), "--runs", str(args.runs)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    finally:
        if prefix:
            cleanup(broker, prefix)
    if out.returncode != 0:
        raise SystemExit(f"{impl} on {broker} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def cleanup(url: str, prefix: str) -> None:
    import redis
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=5000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i:i + 1000])
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["celery", "celeriac"])
    ap.add_argument("--broker")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--group", type=int, default=10000)
    ap.add_argument("--chord", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    if args.impl:  # one measurement, in this interpreter
        print(json.dumps(measure(args.impl, args.broker, args.prefix, args.group, args.chord, args.runs)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "celery-redis": run(celery_python(), "celery", args.redis, args),
            "celeriac-redis": run(sys.executable, "celeriac", args.redis, args),
            "celeriac-sqlite": run(sys.executable, "celeriac", f"sqlite:///{tmp}/bench.db", args),
        }
    c = results["celery-redis"]
    print(f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; worker -c 2 (prefork); best of {args.runs}")
    print(f"{'':34} {'Celery/Redis':>13} {'celeriac/Redis':>15} {'celeriac/SQLite':>16}")
    for label, key in ((f"group of {args.group:,}: finish (s)", "group_s"),
                       (f"group of {args.group:,}: send (s)", "group_send_s"),
                       (f"chord of {args.chord:,} + body (s)", "chord_s")):
        vals = [float(results[k][key]) for k in ("celery-redis", "celeriac-redis", "celeriac-sqlite")]
        print(f"{label:34} {vals[0]:>13.2f} {vals[1]:>15.2f} {vals[2]:>16.2f}")
    for label, key in (("group", "group_s"), ("chord", "chord_s")):
        cv = float(c[key])
        print(f"{label} speed-up vs Celery/Redis: celeriac/Redis {cv / float(results['celeriac-redis'][key]):.1f}x, "
              f"celeriac/SQLite {cv / float(results['celeriac-sqlite'][key]):.1f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
