"""Pure logic of task semantics: token buckets, rate parsing, declaration checks, backoff,
the alarm timer, einfo, and eager mode (which runs the worker's middleware in-process)."""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery, signals
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import Broker, Capabilities, take_tokens
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import (
    ImproperlyConfigured,
    MaxRetriesExceededError,
    OperationalError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from celeriac.result import EagerResult
from celeriac.task import Task, _parse_rate
from celeriac.worker.execute import ExceptionInfo
from celeriac.worker.ratelimit import RateLimits, TokenBucket
from celeriac.worker.timelimits import AlarmTimer


@pytest.fixture
def app() -> Iterator[Celery]:
    a = Celery("unit", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)
    yield a
    a.close()


# -- token buckets ---------------------------------------------------------------

def test_take_tokens_arithmetic():
    assert take_tokens(None, 0.0, 100.0, rate=10, burst=1, n=1) == (0.0, 0.0)  # a new bucket is full
    tokens, wait = take_tokens(0.0, 100.0, 100.05, rate=10, burst=1, n=1)
    assert tokens == pytest.approx(0.5) and wait == pytest.approx(0.05)  # nothing taken
    assert take_tokens(0.5, 100.0, 100.05, rate=10, burst=1, n=1) == (pytest.approx(0.0), 0.0)
    assert take_tokens(0.0, 0.0, 1000.0, rate=10, burst=3, n=1)[0] == pytest.approx(2.0)  # capped
    assert take_tokens(None, 0.0, 1.0, rate=1, burst=1, n=2)[1] == 0.0  # burst grows to n
    with pytest.raises(ValueError):
        take_tokens(None, 0.0, 1.0, rate=0, burst=1, n=1)


def test_token_bucket_take_defer_give_back():
    b = TokenBucket(10.0)
    t0 = b.stamp
    assert b.take(now=t0) == 0.0
    assert b.take(now=t0) == pytest.approx(0.1)
    assert b.take(now=t0 + 0.1) == 0.0
    assert [round(b.defer(0.1, now=t0), 3) for _ in range(3)] == [0.1, 0.2, 0.3]  # spaced one token apart
    b.give_back()
    assert b.take(now=t0 + 0.1) == 0.0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_acquire_tokens_is_shared_by_broker_objects(kind: str, tmp_path: Path):
    url = f"memory://{uuid.uuid4().hex}" if kind == "memory" else f"sqlite:///{tmp_path}/b.db"
    a, b = broker_from_url(url), broker_from_url(url)
    try:
        assert a.capabilities.global_rate_limit
        assert a.acquire_tokens("task:x", 2.0) == 0.0
        wait = b.acquire_tokens("task:x", 2.0)
        assert 0.3 < wait <= 0.5
        assert b.acquire_tokens("task:y", 2.0) == 0.0  # another key, another bucket
        time.sleep(wait + 0.02)
        assert b.acquire_tokens("task:x", 2.0) == 0.0
    finally:
        a.close()
        b.close()


class _NoGlobalBroker(MemoryBroker):
    capabilities = Capabilities(global_rate_limit=False)
    acquire_tokens = Broker.acquire_tokens  # the interface's default


def test_a_broker_without_global_rate_limits_says_so(app: Celery, caplog: pytest.LogCaptureFixture):
    broker = _NoGlobalBroker(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(OperationalError, match="cannot coordinate a global_rate_limit"):
        broker.acquire_tokens("k", 1.0)
    app._broker = broker

    @app.task(global_rate_limit="1/s")
    def g() -> None: ...

    limits = RateLimits(app)
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        assert limits.delay_for(g) == 0.0 and limits.delay_for(g) == 0.0
    assert "cannot coordinate it" in caplog.text


def test_rate_limits_per_worker_share_change_and_disable(app: Celery):
    @app.task(rate_limit="10/s")
    def f() -> None: ...

    @app.task
    def free() -> None: ...

    limits = RateLimits(app, share=0.5)  # a prefork child of a 2-process worker: 5/s
    assert limits.delay_for(f) == 0.0
    assert limits.delay_for(f) == pytest.approx(0.2, abs=0.01)
    assert limits.delay_for(free) == 0.0
    f.rate_limit = "100/s"  # changed at run time (app.control.rate_limit): a new bucket
    assert limits.delay_for(f) == 0.0
    f.rate_limit = None
    assert limits.delay_for(f) == 0.0 and limits.delay_for(f) == 0.0
    app.conf.worker_disable_rate_limits = True
    f.rate_limit = "1/h"
    disabled = RateLimits(app)
    assert [disabled.delay_for(f) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_global_rate_limit_through_the_broker(app: Celery):
    @app.task(global_rate_limit="5/s")
    def g() -> None: ...

    one, two = RateLimits(app), RateLimits(app)  # two workers on one broker
    assert one.delay_for(g) == 0.0
    assert 0.1 < two.delay_for(g) <= 0.45


# -- declarations and calls --------------------------------------------------------

@pytest.mark.parametrize("rate, per_second", [("10/s", 10.0), ("120/m", 2.0), ("3600/h", 1.0),
                                              (5, 5.0), ("7", 7.0), (None, None), ("", None)])
def test_parse_rate(rate: Any, per_second: float | None):
    assert _parse_rate(rate) == per_second


@pytest.mark.parametrize("rate", ["fast", "10/x", "-1/s", -3, "ten/m"])
def test_bad_rate_limits_fail_at_declaration(app: Celery, rate: Any):
    with pytest.raises(ImproperlyConfigured, match="rate_limit"):
        @app.task(rate_limit=rate, name=f"bad_{uuid.uuid4().hex[:6]}")
        def f() -> None: ...
    with pytest.raises(ImproperlyConfigured, match="global_rate_limit"):
        @app.task(global_rate_limit=rate)
        def g() -> None: ...


def test_bad_limits_on_class_based_tasks(app: Celery):
    class Bad(Task):  # type: ignore[type-arg]
        name = "bad.class"
        rate_limit = "often"

        def run(self) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="bad.class: rate_limit"):
        app.register_task(Bad)


@pytest.mark.parametrize("opts, message", [
    ({"time_limit": 0}, "time_limit must be a positive number"),
    ({"time_limit": -1}, "time_limit must be a positive number"),
    ({"soft_time_limit": 0}, "soft_time_limit must be a positive number"),
    ({"time_limit": 1, "soft_time_limit": 2}, "larger than time_limit"),
])
def test_bad_time_limits_fail_at_declaration_and_call(app: Celery, opts: dict[str, Any], message: str):
    with pytest.raises(ImproperlyConfigured, match=message):
        @app.task(**opts)
        def f() -> None: ...

    @app.task
    def ok() -> None: ...

    with pytest.raises(ImproperlyConfigured, match=message):
        ok.apply_async(**opts)


def test_backoff_delay():
    t: Task[Any, Any] = Task()
    t.retry_backoff, t.retry_backoff_max, t.retry_jitter = True, 600, False
    assert [t.backoff_delay(r) for r in range(5)] == [1, 2, 4, 8, 16]
    t.retry_backoff, t.retry_backoff_max = 3, 20
    assert [t.backoff_delay(r) for r in range(4)] == [3, 6, 12, 20]
    t.retry_backoff = 0.5  # beyond Celery (which rounds factors to whole seconds)
    assert t.backoff_delay(0) == 0.5
    t.retry_backoff, t.retry_jitter, t.retry_backoff_max = True, True, 600
    for retries in range(6):
        for _ in range(20):
            assert 0 <= t.backoff_delay(retries) <= 2 ** retries


# -- time limits in this process -------------------------------------------------------

@pytest.fixture
def alarm_guard() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGALRM)
    saved = signal.getitimer(signal.ITIMER_REAL)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, handler)
    if saved[0]:
        signal.setitimer(signal.ITIMER_REAL, *saved)


def _sleep_until_raised(seconds: float) -> BaseException | None:
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
    except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
        return exc
    return None


def test_alarm_timer_soft_then_hard(alarm_guard: None):
    timer = AlarmTimer(enforce_hard=True)
    assert timer.prepare(0.05, 0.15)
    timer.start()
    t0 = time.monotonic()
    assert isinstance(_sleep_until_raised(2), SoftTimeLimitExceeded)
    assert isinstance(_sleep_until_raised(2), TimeLimitExceeded)
    assert 0.12 < time.monotonic() - t0 < 1.0
    timer.stop()


def test_alarm_timer_without_hard_and_after_stop(alarm_guard: None):
    timer = AlarmTimer(enforce_hard=False)  # a prefork child: hard limits are the supervisor's
    assert not timer.prepare(None, 0.05)
    assert timer.prepare(0.05, 0.1)
    timer.start()
    assert isinstance(_sleep_until_raised(2), SoftTimeLimitExceeded)
    assert _sleep_until_raised(0.2) is None
    timer.stop()
    timer.prepare(0.05, None)
    timer.start()
    timer.stop()
    assert _sleep_until_raised(0.15) is None  # stopped in time: nothing raised


def test_exception_info_is_a_traceback_string():
    try:
        raise ValueError("x")
    except ValueError as caught:
        exc = caught
        einfo = ExceptionInfo("Traceback (most recent call last): ...", exc)
    assert isinstance(einfo, str) and einfo.traceback.startswith("Traceback")
    assert einfo.exception is exc and einfo.type is ValueError and einfo.tb is exc.__traceback__


# -- eager mode ------------------------------------------------------------------------

def test_eager_delay_runs_inline_through_the_middleware(app: Celery):
    app.conf.task_always_eager = True
    seen: list[str] = []

    def on_success(task: Any, retval: Any, *args: Any) -> None:
        seen.append(f"on_success {retval}")

    @app.task(bind=True, max_retries=3, on_success=on_success)
    def flaky(self: Any, fails: int) -> int:
        seen.append(f"run {self.request.retries}")
        if self.request.retries < fails:
            raise self.retry(exc=ConnectionError("down"), countdown=60)
        return self.request.retries

    def prerun(sender: Any = None, task_id: str | None = None, **kw: Any) -> None:
        seen.append("prerun")

    signals.task_prerun.connect(prerun, sender=flaky)
    try:
        res = flaky.delay(2)
    finally:
        signals.task_prerun.disconnect(prerun, sender=flaky)
    assert isinstance(res, EagerResult) and res.get() == 2 and res.state == "SUCCESS"
    assert seen == ["prerun", "run 0", "prerun", "run 1", "prerun", "run 2", "on_success 2"]


def test_eager_failures_propagate_or_not(app: Celery):
    app.conf.task_always_eager = True

    @app.task(bind=True, max_retries=1)
    def always(self: Any) -> None:
        self.retry(countdown=0)

    res = always.delay()
    assert res.state == "FAILURE" and isinstance(res.result, MaxRetriesExceededError)
    with pytest.raises(MaxRetriesExceededError):
        res.get()
    assert isinstance(res.get(propagate=False), MaxRetriesExceededError)
    app.conf.task_eager_propagates = True
    with pytest.raises(MaxRetriesExceededError):
        always.delay()


@pytest.mark.parametrize("names", [
    {"CELERY_TASK_ALWAYS_EAGER": True, "CELERY_TASK_EAGER_PROPAGATES": True},
    {"CELERY_ALWAYS_EAGER": True, "CELERY_EAGER_PROPAGATES_EXCEPTIONS": True},
])
def test_eager_settings_with_the_celery_namespace(app: Celery, names: dict[str, bool]):
    """seed 004's Django settings: config_from_object(settings, namespace='CELERY')."""
    settings = type("Settings", (), dict(names))
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.task_always_eager and app.conf.task_eager_propagates

    @app.task
    def div(a: int, b: int) -> float:
        return a / b

    assert div.delay(6, 3).get() == 2
    with pytest.raises(ZeroDivisionError):
        div.delay(1, 0)


def test_retry_with_unserializable_kwargs_names_the_argument(app: Celery):
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True

    @app.task(bind=True)
    def t(self: Any, when: Any = None) -> None:
        self.retry(kwargs={"when": object()}, countdown=0)

    with pytest.raises(TypeError, match="keyword argument 'when'"):
        t.delay()
