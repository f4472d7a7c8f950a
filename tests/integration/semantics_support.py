"""The app module and helpers shared by tests/integration/test_task_semantics_*.py.

Every test writes ``semapp.py`` into its own ``tmp_path`` and runs real workers on it
with ``celeriac -A semapp worker``, once per broker in ``BROKER_KINDS`` (the ``sem``
fixture's parameter): a fresh SQLite file, or Redis (broker and result backend) under a
key prefix of its own, deleted afterwards (``broker.json`` tells the app which).  Receivers
and hooks in the app append one line per event to ``events.txt``, which the tests
read back.  ``SEM_CONF`` (JSON) adds settings to the app for one test.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WorkerProcess, wait_for, write

from celeriac import Celery

APP = r'''
import json, os, signal, time
from datetime import datetime, timedelta, timezone

from celeriac import Celery, Task, shared_task, signals
from celeriac.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celeriac.utils.log import get_task_logger

HERE = os.path.dirname(os.path.abspath(__file__))
EVENTS = os.path.join(HERE, "events.txt")
with open(os.path.join(HERE, "broker.json")) as _f:
    BROKER = json.load(_f)  # written by the test: {"url", "backend", "options"}
app = Celery("semapp", broker=BROKER["url"] or "sqlite:///" + os.path.join(HERE, "sem.db"),
             backend=BROKER["backend"])
app.conf.broker_transport_options = dict(BROKER["options"], lease_seconds=float(os.environ.get("SEM_LEASE", "30")))
app.conf.result_backend_transport_options = dict(BROKER["options"])
app.conf.update(json.loads(os.environ.get("SEM_CONF", "{}")))
logger = get_task_logger(__name__)


def event(*parts):
    with open(EVENTS, "a") as f:
        f.write("|".join(str(p) for p in parts) + "\n")


class SpecificError(Exception):
    pass


# -- retries -------------------------------------------------------------------
@app.task(bind=True, max_retries=3)
def unreliable_task(self, fails=1, countdown=60):
    # seed 003, as written (with a way to make it fail)
    try:
        event("unreliable", self.request.retries, time.time())
        if self.request.retries < fails:
            raise ConnectionError("service down")
        return "ok"
    except Exception as exc:
        raise self.retry(exc=exc, countdown=countdown)


@app.task(bind=True, max_retries=5)
def send_email(self, email_address, fails=99):
    # seed 003 again: self.retry(...) without raise
    try:
        event("send_email", self.request.retries)
        if self.request.retries < fails:
            raise SpecificError(f"smtp refused {email_address}")
        return f"sent to {email_address}"
    except SpecificError as exc:
        self.retry(exc=exc, countdown=0.05)


@app.task(bind=True, max_retries=2)
def retry_without_exc(self):
    event("retry_without_exc", self.request.retries)
    self.retry(countdown=0.05)


@app.task(bind=True, max_retries=None)
def retry_forever(self, until):
    if self.request.retries < until:
        raise self.retry(countdown=0.02)
    return self.request.retries


@app.task(bind=True, default_retry_delay=0.5)
def default_delay(self):
    event("default_delay", self.request.retries, time.time())
    if self.request.retries < 1:
        raise self.retry()
    return "done"


@app.task(bind=True)
def retry_eta(self):
    event("retry_eta", self.request.retries, time.time())
    if self.request.retries < 1:
        raise self.retry(eta=datetime.now(timezone.utc) + timedelta(seconds=0.7))
    return "done"


@app.task(bind=True, max_retries=1)
def retry_max_override(self):
    event("retry_max_override", self.request.retries)
    raise self.retry(countdown=0.02, max_retries=3)


@app.task(bind=True, autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 4, "countdown": 0.05})
def autoretry(self, fails):
    event("autoretry", self.request.retries)
    if self.request.retries < fails:
        raise ConnectionError(f"attempt {self.request.retries}")
    return self.request.retries


@app.task(bind=True, autoretry_for=(Exception,), dont_autoretry_for=(ValueError,),
          retry_kwargs={"countdown": 0.05})
def dont_autoretry(self, kind):
    event("dont_autoretry", self.request.retries)
    raise ValueError("no retry") if kind == "value" else KeyError("retry me")


@app.task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=True, retry_backoff_max=1,
          retry_jitter=False, max_retries=2)
def backoff(self):
    event("backoff", self.request.retries, time.time())
    raise ConnectionError("still down")


@app.task(bind=True, max_retries=1)
def retry_unserializable(self):
    if self.request.retries == 0:
        self.retry(args=(object(),), countdown=0.05)


# -- time limits -----------------------------------------------------------------
@app.task(time_limit=1)
def hard_limited(seconds=30):
    event("hard_start", os.getpid())
    time.sleep(seconds)
    return "finished"


@app.task(soft_time_limit=0.5)
def soft_caught():
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(soft_time_limit=0.5)
def soft_uncaught():
    time.sleep(10)


@app.task
def sleeper(seconds, tag=None):
    if tag:
        event("start", tag, os.getpid(), time.time())
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        event("soft", tag)
        raise
    if tag:
        event("end", tag, os.getpid(), time.time())
    return os.getpid()


@app.task
def stubborn(seconds):
    """Swallows its soft limit and goes on: only the hard limit stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(max(end - time.monotonic(), 0))
        except SoftTimeLimitExceeded:
            event("stubborn_soft")
    return "outlived"


@app.task
def getpid():
    return os.getpid()


HOG = []


@app.task
def hog(mib):
    HOG.append(bytearray(mib * 1024 * 1024))
    return os.getpid()


# -- acks and worker loss ----------------------------------------------------------
@app.task(acks_late=True)
def late_sleeper(seconds, tag):
    event("late_start", tag, os.getpid())
    time.sleep(seconds)
    event("late_end", tag)
    return tag


@app.task(track_started=True)
def early_sleeper(seconds, tag):
    event("early_start", tag, os.getpid())
    time.sleep(seconds)
    return tag


@app.task(bind=True, acks_late=True)
def late_suicide(self, marker):
    # the first run kills its own process; the second (redelivered) run succeeds
    event("late_suicide", self.request.delivery_info.get("redelivered"))
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(acks_late=True, reject_on_worker_lost=False)
def late_suicide_no_requeue():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def suicide():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(acks_late=True, acks_on_failure_or_timeout=False)
def late_fails():
    raise RuntimeError("broken for good")


@app.task(acks_late=True)
def late_fails_acked():
    raise RuntimeError("broken, acked")


# -- states and results ------------------------------------------------------------
@app.task
def add(a, b):
    return a + b


@app.task(bind=True)
def progress(self, steps, gate):
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps})
        while not os.path.exists(f"{gate}.{i}"):
            time.sleep(0.02)
    return steps


@app.task(ignore_result=True)
def ignored(x):
    event("ignored_ran", x)
    return x


@app.task(ignore_result=True, store_errors_even_if_ignored=True)
def ignored_but_errors():
    raise KeyError("stored anyway")


@app.task(ignore_result=True)
def ignored_fail():
    raise KeyError("not stored")


@app.task(bind=True)
def rejecter(self, requeue):
    event("rejecter", self.request.delivery_info.get("redelivered"))
    if requeue and self.request.delivery_info.get("redelivered"):
        return "second time"
    raise Reject("not now", requeue=requeue)


@app.task
def ignorer():
    event("ignorer")
    raise Ignore()


@app.task(throws=(KeyError,))
def expected_error():
    raise KeyError("expected one")


@app.task
def unexpected_error():
    raise KeyError("unexpected one")


@app.task(bind=True)
def logs(self):
    logger.info("hello from the task")
    return self.request.id


# -- hooks -------------------------------------------------------------------------
class Hooked(Task):
    def before_start(self, task_id, args, kwargs):
        event("before_start", task_id, args)

    def on_success(self, retval, task_id, args, kwargs):
        event("on_success", retval, task_id, args, kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        event("on_failure", repr(exc), task_id, "Traceback" in einfo.traceback, type(einfo.exception).__name__)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        event("on_retry", repr(exc), task_id)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        event("after_return", status, task_id)


@app.task(base=Hooked, bind=True, max_retries=1)
def hooked(self, mode):
    if mode == "fail":
        raise ValueError("hook me")
    if mode == "retry" and self.request.retries == 0:
        raise self.retry(exc=ConnectionError("again"), countdown=0.05)
    return mode


def deco_failure(task, exc, task_id, *args, **kwargs):
    event("deco_failure", task.name, repr(exc), task_id)


def deco_success(task, retval, *args, **kwargs):
    event("deco_success", task.name, retval)


@shared_task(on_failure=deco_failure, on_success=deco_success, name="Simple function")
def simple_function(a, b):
    # seed 004, as written
    c = a + b
    return c


# -- rate limits -------------------------------------------------------------------
@app.task(rate_limit="10/s")
def limited(i):
    return time.time()


@app.task(global_rate_limit="10/s")
def globally_limited(i):
    return time.time()


# -- signals -------------------------------------------------------------------------
def _name(sender):
    return getattr(sender, "name", None) or type(sender).__name__


@signals.task_prerun.connect
def on_prerun(sender=None, task_id=None, **kw):
    event("task_prerun", _name(sender), task_id)


@signals.task_postrun.connect
def on_postrun(sender=None, task_id=None, state=None, **kw):
    event("task_postrun", _name(sender), task_id, state)


def on_success_signal(sender=None, result=None, **kw):
    event("task_success", _name(sender), result)


signals.task_success.connect(on_success_signal, sender="semapp.add")  # call form with a sender filter


@signals.task_failure.connect(sender=hooked)
def on_failure_signal(sender=None, task_id=None, exception=None, einfo=None, **kw):
    event("task_failure", _name(sender), task_id, repr(exception), bool(einfo))


@signals.task_retry.connect
def on_retry_signal(sender=None, request=None, reason=None, **kw):
    event("task_retry", _name(sender), request.id)


@signals.task_received.connect
def on_received(sender=None, request=None, **kw):
    event("task_received", request.id)


@signals.task_rejected.connect
def on_rejected(sender=None, message=None, exc=None, **kw):
    event("task_rejected", type(exc).__name__)


@signals.task_unknown.connect
def on_unknown(sender=None, name=None, id=None, **kw):
    event("task_unknown", name, id)


@signals.task_revoked.connect
def on_revoked(sender=None, request=None, expired=None, **kw):
    event("task_revoked", request.id, expired)


for _sig in ("worker_init", "worker_ready", "worker_shutdown", "celeryd_init", "after_setup_logger",
             "after_setup_task_logger"):
    getattr(signals, _sig).connect(lambda sender=None, _s=_sig, **kw: event(_s, os.getpid()), weak=False)


@signals.worker_process_init.connect
def on_process_init(**kw):
    event("worker_process_init", os.getpid())


@signals.worker_process_shutdown.connect
def on_process_shutdown(pid=None, **kw):
    event("worker_process_shutdown", pid)


@signals.before_task_publish.connect
def on_before_publish(sender=None, headers=None, **kw):
    event("before_task_publish", sender, headers["id"])


@signals.after_task_publish.connect
def on_after_publish(sender=None, headers=None, **kw):
    event("after_task_publish", sender, headers["id"])


if os.environ.get("SEM_SETUP_LOGGING"):
    @signals.setup_logging.connect
    def on_setup_logging(loglevel=None, **kw):
        import logging, sys
        logging.basicConfig(level=loglevel, stream=sys.stderr, format="custom-logging %(message)s")
        event("setup_logging", loglevel)
'''


class Sem:
    """One test's project: the app file, a client app on the same broker, the events."""

    def __init__(self, tmp_path: Path, kind: str = "sqlite") -> None:
        self.path = tmp_path
        self.kind = kind
        self.db = tmp_path / "sem.db"
        self.broker = redis_broker_settings() if kind == "redis" else {"url": None, "backend": None, "options": {}}
        write(tmp_path / "broker.json", json.dumps(self.broker))
        write(tmp_path / "semapp.py", APP)
        self.client = Celery("semapp-client", broker=self.broker["url"] or f"sqlite:///{self.db}",
                             backend=self.broker["backend"], set_as_current=False)
        self.client.conf.broker_transport_options = dict(self.broker["options"])
        self.client.conf.result_backend_transport_options = dict(self.broker["options"])
        self.workers: list[WorkerProcess] = []

    def worker(self, *args: str, conf: dict[str, Any] | None = None, lease: float | None = None,
               **env: str) -> WorkerProcess:
        if conf:
            env["SEM_CONF"] = json.dumps(conf)
        if lease is not None:
            env["SEM_LEASE"] = str(lease)
        w = WorkerProcess(self.path, "semapp", "-l", "INFO", *args, **env)
        self.workers.append(w)
        return w

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(f"semapp.{name}", args, **options)

    def events(self, kind: str | None = None) -> list[list[str]]:
        path = self.path / "events.txt"
        if not path.exists():
            return []
        rows = [line.split("|") for line in path.read_text().splitlines() if line]
        return [r for r in rows if kind is None or r[0] == kind]

    def wait_events(self, kind: str, count: int, timeout: float = 30.0) -> list[list[str]]:
        wait_for(lambda: len(self.events(kind)) >= count, timeout, message=f"{count} {kind} events")
        return self.events(kind)

    def close(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception:
                w.kill_all()
        self.client.close()
        if self.kind == "redis":
            delete_redis_keys(self.broker["options"]["global_keyprefix"])

    # -- what the broker holds, read from its own store ----------------------------
    def delayed_due(self, queue: str = "celery") -> list[float]:
        """When each delayed (countdown/ETA/retry) message of ``queue`` is due."""
        if self.kind == "redis":
            key = self.broker["options"]["global_keyprefix"] + "celeriac.delayed." + queue
            with redis_client() as r:
                return [score for _, score in r.zrange(key, 0, -1, withscores=True)]
        with sqlite3.connect(self.db) as conn:
            return [r[0] for r in conn.execute(
                "SELECT not_before FROM celeriac_messages WHERE state = 2 AND queue = ?", (queue,))]

    def queued_headers(self, queue: str = "celery") -> list[dict[str, Any]]:
        """The headers of every message waiting (ready) in ``queue``."""
        if self.kind == "redis":
            b = self.client.broker
            with redis_client() as r:
                raws = [raw for step in b.steps for raw in r.lrange(b.queue_key(queue, step), 0, -1)]
            return [json.loads(raw)["headers"] for raw in raws]
        with sqlite3.connect(self.db) as conn:
            return [json.loads(p)["headers"] for (p,) in conn.execute(
                "SELECT payload FROM celeriac_messages WHERE queue = ?", (queue,))]

    def result_stored(self, task_id: str) -> bool:
        """Whether the backend still holds a row/key for ``task_id`` (expired or not)."""
        if self.kind == "redis":
            with redis_client() as r:
                return bool(r.exists(self.client.backend.key_for(task_id)))
        with sqlite3.connect(self.db) as conn:
            return bool(conn.execute("SELECT COUNT(*) FROM celeriac_results WHERE task_id = ?",
                                     (task_id,)).fetchone()[0])


# -- Redis ---------------------------------------------------------------------------------
BROKER_KINDS = ["sqlite", "redis"]
REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextlib.contextmanager
def redis_client() -> Iterator[Any]:
    import redis
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        yield client
    finally:
        client.close()


def redis_broker_settings() -> dict[str, Any]:
    """A broker.json for Redis: broker and results on REDIS_URL under a fresh key prefix."""
    import redis
    try:
        with redis_client() as r:
            r.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"sem{uuid.uuid4().hex[:10]}:"
    return {"url": REDIS_URL, "backend": REDIS_URL, "options": {"global_keyprefix": prefix}}


def delete_redis_keys(prefix: str) -> None:
    with redis_client() as r:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])


def open_sem(tmp_path: Path, kind: str = "sqlite") -> Iterator[Sem]:
    """The body of each test module's ``sem`` fixture (``kind``: one of BROKER_KINDS)."""
    project = Sem(tmp_path, kind)
    yield project
    project.close()


def children_of(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def elapsed(fn: Any) -> tuple[float, Any]:
    t = time.monotonic()
    value = fn()
    return time.monotonic() - t, value
