"""The tasks ``celeriac demo`` runs (an ordinary app module a worker loads with -A)."""

from __future__ import annotations

import os
import time

from celeriac import Celery

app = Celery("celeriac_demo", broker=os.environ.get("CELERIAC_DEMO_URL", "sqlite:///celeriac-demo.db"))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def divide(x: float, y: float) -> float:
    return x / y


@app.task
def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x
