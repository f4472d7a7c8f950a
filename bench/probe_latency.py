"""Round-trip latency of a lone task on Redis: ``add.delay(1, 2).get()`` one after another.

    python bench/probe_latency.py --redis redis://127.0.0.1:6392/0 [--rounds 3 -n 500]

Starts a celeriac worker (``-c 2`` prefork, as bench_redis.py does), warms up, then runs
``--rounds`` rounds of ``-n`` sequential round trips for each mode, interleaved
(direct, listener, direct, ...; the machine is shared and noisy), and prints p50/p90/p99
in ms.  ``direct``: ``get()`` waits on the backend's own RESP3 connection
(``backends/_redis_direct.py``); ``listener``: that path switched off, so ``get()``
subscribes through the listener thread, then reads the key, as before.  To compare with
an older tree: ``PYTHONPATH=<its checkout>:<site-packages> python -S bench/probe_latency.py
--modes listener`` (``-S``: no editable install of this checkout in the way).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="redis://127.0.0.1:6392/0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--modes", default="direct,listener")
    args = ap.parse_args()
    prefix = f"probe{uuid.uuid4().hex[:8]}."
    env = dict(os.environ, BENCH_IMPL="celeriac", BENCH_BROKER=args.redis, BENCH_BACKEND=args.redis,
               BENCH_PREFIX=prefix, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    sys.path.insert(0, HERE)
    python = [sys.executable, *(["-S"] if sys.flags.no_site else [])]
    proc = subprocess.Popen([*python, "-m", "celeriac.cli.main", "-q", "-A", "bench_app", "worker",
                             "-c", "2", "-l", "warning"], cwd=HERE, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from bench_app import add, app
        backend = app.backend
        add.delay(1, 2).get(timeout=60)       # the worker is up
        for _ in range(300):
            add.delay(1, 2).get(timeout=10)
        modes = args.modes.split(",")
        samples: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes:
                if hasattr(backend, "_direct"):   # (absent before the direct wait: run as "listener")
                    backend._direct().unsupported = mode != "direct"
                xs = []
                for _ in range(args.n):
                    t0 = time.perf_counter()
                    assert add.delay(1, 2).get(timeout=10) == 3
                    xs.append((time.perf_counter() - t0) * 1000)
                samples[mode] += xs
                print(f"round {r + 1} {mode:9s} p50 {statistics.median(xs):.3f}  p90 {pct(xs, 0.9):.3f}  "
                      f"p99 {pct(xs, 0.99):.3f} ms", flush=True)
        for mode, xs in samples.items():
            print(f"all     {mode:9s} p50 {statistics.median(xs):.3f}  p90 {pct(xs, 0.9):.3f}  "
                  f"p99 {pct(xs, 0.99):.3f} ms  (n={len(xs)})")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        import redis
        r = redis.Redis.from_url(args.redis)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])


if __name__ == "__main__":
    main()
