"""Enqueue cost on Redis, no worker running: tasks/s, and CPU per message of this process and
of Redis (wall-clock rates are noisy on a shared machine; CPU per message much less so).

    .venv/bin/python bench/bench_bulk.py [-n 20000] [--batch 1000] [--repeat 3] [--url redis://...]

"bulk" is ``add_noresult.apply_many`` of ``--batch`` calls at a time (the issue's "enqueue,
bulk"); "single" is ``add_noresult.delay`` per call.  Keys get a fresh prefix, deleted after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="messages per run")
    ap.add_argument("--batch", type=int, default=1000, help="calls per apply_many")
    ap.add_argument("--repeat", type=int, default=3, help="bulk runs")
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    opts = ap.parse_args()
    prefix = f"benchbulk{uuid.uuid4().hex[:6]}:"
    os.environ.update(BENCH_IMPL="celeriac", BENCH_BROKER=opts.url, BENCH_BACKEND=opts.url, BENCH_PREFIX=prefix)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import redis
    from bench_app import add_noresult, app

    r = redis.Redis.from_url(opts.url)

    def redis_cpu() -> float:
        info: Any = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def measure(label: str, send: Callable[[], None]) -> None:
        c0, r0, t0 = time.process_time(), redis_cpu(), time.perf_counter()
        send()
        app.broker.stats("celery")  # every pipelined reply read
        wall, n = time.perf_counter() - t0, opts.n
        print(f"{label:8s} {n / wall:9.0f} tasks/s   client {(time.process_time() - c0) / n * 1e6:5.1f} us/msg"
              f"   redis {(redis_cpu() - r0) / n * 1e6:4.1f} us/msg", flush=True)
        app.broker.purge("celery")

    def bulk() -> None:
        for start in range(0, opts.n, opts.batch):
            add_noresult.apply_many([(i, i) for i in range(start, min(start + opts.batch, opts.n))])

    def single() -> None:
        for i in range(opts.n):
            add_noresult.delay(i, i)

    try:
        add_noresult.apply_many([(0, 0)])  # connect, declare the queue
        app.broker.purge("celery")
        for _ in range(opts.repeat):
            measure("bulk", bulk)
        measure("single", single)
    finally:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        app.broker.close()
        r.close()


if __name__ == "__main__":
    main()
