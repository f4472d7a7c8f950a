"""Issue 4 benchmark: celeriac and Celery 5 side by side on the same Redis, in one run.

    .venv/bin/python bench/bench_redis.py [-n 20000] [--redis redis://127.0.0.1:6379/0]

Celery runs from its own virtualenv (.venv-celery at the repository root, shared with the
interop tests; created here if missing). Both run
the same measurement code (bench/measure.py) and the same task module (bench/bench_app.py),
each with its own CLI worker (-c 2), on one Redis with separate key prefixes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
from celery_env import celery_python  # noqa: E402  (bench/ is on sys.path when run as a script)


def run(python: str, impl: str, url: str, n: int) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    out = subprocess.run([python, os.path.join(HERE, "measure.py"), "--impl", impl, "--broker", url,
                          "--backend", url, "--prefix", prefix, "-n", str(n)], capture_output=True, text=True)
    cleanup(url, prefix)
    if out.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cleanup(url: str, prefix: str) -> None:
    import redis
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=5000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i:i + 1000])
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    celery = run(celery_python(), "celery", args.redis, args.n)
    ours = run(sys.executable, "celeriac", args.redis, args.n)
    rows = [
        ("enqueue, single delay() (tasks/s)", "enqueue_single_per_s", True),
        ("end to end, no results (tasks/s)", "e2e_noresult_per_s", True),
        ("end to end, with results (tasks/s)", "e2e_results_per_s", True),
        ("round trip p50 (ms)", "rtt_p50_ms", False),
        ("round trip p99 (ms)", "rtt_p99_ms", False),
        ("idle worker RSS, all processes (MiB)", "idle_worker_rss_kib", False),
        ("idle worker PSS, all processes (MiB)", "idle_worker_pss_kib", False),
    ]
    print(f"Redis {args.redis}, N={args.n}, worker -c 2 (prefork), same machine, same run")
    print(f"{'':40} {'Celery':>12} {'celeriac':>12} {'ratio':>8}")
    for label, key, higher_better in rows:
        c, o = float(celery[key]), float(ours[key])
        if key.endswith("_kib"):
            c, o = c / 1024, o / 1024
        ratio = (o / c) if higher_better else (c / o if o else float("inf"))
        print(f"{label:40} {c:>12,.2f} {o:>12,.2f} {ratio:>7.1f}x")
    print(f"{'enqueue, bulk apply_many() (tasks/s)':40} {'-':>12} {ours['enqueue_bulk_per_s']:>12,.0f}")
    print(f"{'end to end, results, bulk send':40} {'-':>12} {ours['e2e_results_bulk_per_s']:>12,.0f}")
    print("(ratio: how many times better celeriac is; for latency and memory, Celery / celeriac)")
    print(json.dumps({"celery": celery, "celeriac": ours}))


if __name__ == "__main__":
    main()
