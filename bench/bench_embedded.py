"""Issue 2 benchmark: celeriac on the embedded SQLite broker, 2-process worker.

    .venv/bin/python bench/bench_embedded.py [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    args = ap.parse_args()
    db = os.path.join(tempfile.mkdtemp(prefix="celeriac-bench-"), "bench.db")
    url = f"sqlite:///{db}"
    out = subprocess.run([sys.executable, os.path.join(HERE, "measure.py"), "--impl", "celeriac", "--broker", url,
                          "-n", str(args.n)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"celeriac on the embedded SQLite broker, N={args.n}, worker -c 2 (prefork)")
    print(f"  enqueue, single delay():        {r['enqueue_single_per_s']:>10,.0f} tasks/s")
    print(f"  enqueue, bulk apply_many():     {r['enqueue_bulk_per_s']:>10,.0f} tasks/s")
    print(f"  end to end, no results:         {r['e2e_noresult_per_s']:>10,.0f} tasks/s")
    print(f"  end to end, results stored:     {r['e2e_results_per_s']:>10,.0f} tasks/s   (single delay() calls)")
    print(f"  end to end, results, bulk send: {r['e2e_results_bulk_per_s']:>10,.0f} tasks/s   (apply_many)")
    print(f"  drain a {2 * args.n} backlog (incl. startup): {r['drain_backlog_per_s_incl_startup']:>8,.0f} tasks/s")
    print(f"  round trip delay().get() p50:   {r['rtt_p50_ms']:>10.2f} ms        (target <= 5 ms)")
    print(f"  round trip delay().get() p99:   {r['rtt_p99_ms']:>10.2f} ms")
    print(f"  worker RSS idle / busy:         {r['idle_worker_rss_kib'] / 1024:>7.1f} / {r['busy_worker_rss_kib'] / 1024:.1f} MiB")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
