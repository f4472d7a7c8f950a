"""The canvas benchmark's tasks, importable by Celery and by celeriac (BENCH_IMPL picks which)."""

import os

if os.environ.get("BENCH_IMPL", "celeriac") == "celery":
    from celery import Celery, chord, group
else:
    from celeriac import Celery, chord, group

app = Celery("bench_canvas_app", broker=os.environ["BENCH_BROKER"],
             backend=os.environ.get("BENCH_BACKEND") or os.environ["BENCH_BROKER"])
prefix = os.environ.get("BENCH_PREFIX")
if prefix:
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
app.conf.worker_prefetch_multiplier = int(os.environ.get("BENCH_PREFETCH", "4"))
__all__ = ["app", "add", "tsum", "chord", "group"]


@app.task
def add(x, y):
    return x + y


@app.task
def tsum(xs):
    return sum(xs)
