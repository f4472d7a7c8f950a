"""The benchmark's tasks, importable by Celery and by celeriac (BENCH_IMPL picks which)."""

import os

if os.environ.get("BENCH_IMPL", "celeriac") == "celery":
    from celery import Celery
else:
    from celeriac import Celery

app = Celery("bench_app", broker=os.environ["BENCH_BROKER"], backend=os.environ.get("BENCH_BACKEND") or None)
prefix = os.environ.get("BENCH_PREFIX")
if prefix:
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
app.conf.worker_prefetch_multiplier = int(os.environ.get("BENCH_PREFETCH", "4"))
if os.environ.get("BENCH_EVENTS"):  # task events on (the worker's -E)
    app.conf.worker_send_task_events = True


@app.task
def add(x, y):
    return x + y


@app.task(ignore_result=True)
def add_noresult(x, y):
    return x + y
