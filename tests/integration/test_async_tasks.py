"""``async def`` tasks: the asyncio pool, coroutines inside prefork/threads/solo, time limits,
retries, terminate, shutdowns, and the awaitable client calls.  Real worker processes on the
embedded SQLite broker and on Redis (broker and results, under a key prefix per test)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from semantics_support import BROKER_KINDS, delete_redis_keys, redis_broker_settings
from support import WorkerProcess, wait_for, write

from celeriac import Celery
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

APP = """
import asyncio, os, time
from celeriac import Celery
from celeriac.exceptions import SoftTimeLimitExceeded
app = Celery('aioapp', broker={broker!r}, backend={backend!r})
app.conf.broker_transport_options = {options!r}
app.conf.result_backend_transport_options = {options!r}

@app.task
async def nap(x, seconds=0.01):
    await asyncio.sleep(seconds)
    return x

@app.task(bind=True)
async def whoami(self, seconds):
    before = self.request.id
    await asyncio.sleep(seconds)
    return [before, self.request.id, self.request.retries, os.getpid()]

@app.task
def syncnap(x, seconds):
    time.sleep(seconds)
    return x

@app.task(soft_time_limit=0.5)
async def soft_caught(seconds):
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.05)  # the loop still works inside the handler
        return 'caught'
    return 'not interrupted'

@app.task(soft_time_limit=0.5)
async def soft_uncaught(seconds):
    await asyncio.sleep(seconds)
    return 'not interrupted'

@app.task(soft_time_limit=0.5)
async def soft_busy(seconds):
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:  # no await: the alarm lands in this code
            pass
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.01)
        return 'caught busy'
    return 'not interrupted'

@app.task(time_limit=1)
async def hard(seconds):
    await asyncio.sleep(seconds)
    return 'not interrupted'

@app.task(bind=True, max_retries=5)
async def flaky(self, fail_times):
    await asyncio.sleep(0.01)
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.1)
    return self.request.retries

def plain_middleware(ctx, call_next):  # no PHASES halves: the asyncio pool runs it in a thread
    ctx.req.seen_by = 'plain'
    call_next(ctx)
    if ctx.state == 'SUCCESS' and isinstance(ctx.retval, dict):
        ctx.retval['after'] = 'plain'

if os.environ.get('PLAIN_MW'):
    app.middleware = [plain_middleware]

@app.task(bind=True)
async def through_middleware(self):
    await asyncio.sleep(0.01)
    return {{'before': getattr(self.request, 'seen_by', None)}}

@app.task(rate_limit='10/s')
async def limited(x):
    return x

@app.task
async def unserializable():
    return object()

@app.task(bind=True, acks_late=True, track_started=True)
async def long_late(self, seconds, marker):
    if os.path.exists(marker) and len(open(marker).read().split()) >= 5:
        seconds = 0.1  # the second time round
    with open(marker, 'a') as f:
        f.write(self.request.id + '\\n')
    await asyncio.sleep(seconds)
    return 'finished'
"""


@pytest.fixture(params=BROKER_KINDS)
def env(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "redis":
        settings = redis_broker_settings()
    else:
        settings = {"url": f"sqlite:///{tmp_path / 'a.db'}", "backend": None, "options": {}}
    write(tmp_path / "aioapp.py", APP.format(broker=settings["url"], backend=settings["backend"],
                                             options=settings["options"]))
    client = Celery("aioapp", broker=settings["url"], backend=settings["backend"], set_as_current=False)
    client.conf.broker_transport_options = dict(settings["options"])
    client.conf.result_backend_transport_options = dict(settings["options"])
    yield tmp_path, client
    client.close()
    if request.param == "redis":
        delete_redis_keys(settings["options"]["global_keyprefix"])


def send(client: Celery, name: str, *args, **options):
    return client.send_task(f"aioapp.{name}", args, **options)


@pytest.mark.slow
def test_a_thousand_concurrent_sleeps_on_one_asyncio_worker(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "1000"):
        send(client, "nap", 0).get(timeout=30)  # warm up
        started = time.monotonic()
        results = [send(client, "nap", i, 1.0) for i in range(1000)]
        values = [r.get(timeout=60) for r in results]
        elapsed = time.monotonic() - started
    assert values == list(range(1000))
    assert elapsed < 5.0, f"1,000 tasks sleeping 1 s took {elapsed:.2f}s"


def test_bound_async_tasks_each_see_their_own_request(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100"):
        results = [send(client, "whoami", 0.3) for _ in range(50)]
        for r in results:
            before, after, retries, _ = r.get(timeout=30)
            assert before == after == r.id and retries == 0


def test_sync_tasks_run_in_threads_beside_the_loop(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "50"):
        started = time.monotonic()
        syncs = [send(client, "syncnap", i, 0.5) for i in range(8)]
        naps = [send(client, "nap", i, 0.5) for i in range(20)]
        assert [r.get(timeout=30) for r in syncs] == list(range(8))
        assert [r.get(timeout=30) for r in naps] == list(range(20))
        assert time.monotonic() - started < 4.0


def test_middleware_without_halves_runs_around_async_tasks(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "20", PLAIN_MW="1") as worker:
        results = [send(client, "through_middleware") for _ in range(10)]
        assert [r.get(timeout=20) for r in results] == [{"before": "plain", "after": "plain"}] * 10
        assert "runs it in a thread per task" in worker.log()


def test_rate_limit_and_a_result_that_cannot_be_stored(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100"):
        bad = send(client, "unserializable")
        with pytest.raises(Exception, match="object"):
            bad.get(timeout=20)
        assert bad.state == "FAILURE"
        started = time.monotonic()
        results = [send(client, "limited", i) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == list(range(20))
        assert time.monotonic() - started >= 1.5  # 10/s, one token at a time


@pytest.mark.parametrize("pool, concurrency, tasks", [("threads", "4", 8), ("prefork", "2", 4)])
def test_async_tasks_inside_sync_pools(env, pool, concurrency, tasks):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", pool, "-c", concurrency, "-O", "fair"):
        send(client, "nap", 0).get(timeout=30)
        started = time.monotonic()
        results = [send(client, "whoami", 0.5) for _ in range(tasks)]
        syncs = [send(client, "syncnap", i, 0.1) for i in range(4)]
        for r in results:
            before, after, _, _ = r.get(timeout=30)
            assert before == after == r.id
        assert [r.get(timeout=30) for r in syncs] == list(range(4))
        # each slot runs its coroutines one after another: two rounds of 0.5 s, not a hang
        assert time.monotonic() - started < 6.0
        if pool == "prefork":  # every child ran some: one asyncio task does not hold a process
            assert len({r.get()[3] for r in results}) == 2
        # the per-thread loop is reused: many more tasks than slots all work
        assert [r.get(timeout=30) for r in [send(client, "nap", i) for i in range(40)]] == list(range(40))


@pytest.mark.parametrize("pool", ["asyncio", "prefork", "solo", "threads"])
def test_soft_time_limit_raises_inside_the_coroutine(env, pool):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", pool, "-c", "2"):
        caught = send(client, "soft_caught", 10)
        uncaught = send(client, "soft_uncaught", 10)
        assert caught.get(timeout=20) == "caught"
        with pytest.raises(SoftTimeLimitExceeded):
            uncaught.get(timeout=20)
        assert uncaught.state == "FAILURE"
        if pool in ("prefork", "solo"):  # SIGALRM in the middle of the coroutine's own code
            assert send(client, "soft_busy", 10).get(timeout=20) == "caught busy"
        # the loop that ran them is fine for the next tasks
        assert [r.get(timeout=20) for r in [send(client, "nap", i) for i in range(5)]] == list(range(5))


@pytest.mark.parametrize("pool", ["asyncio", "threads", "prefork", "solo"])
def test_hard_time_limit_cancels_the_coroutine(env, pool):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", pool, "-c", "2"):
        started = time.monotonic()
        res = send(client, "hard", 30)
        with pytest.raises(TimeLimitExceeded):
            res.get(timeout=20)
        assert time.monotonic() - started < 8.0
        assert res.state == "FAILURE"
        assert send(client, "nap", 7).get(timeout=20) == 7


@pytest.mark.parametrize("pool", ["asyncio", "prefork"])
def test_async_task_retries(env, pool):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", pool, "-c", "2"):
        results = [send(client, "flaky", 2) for _ in range(5)]
        assert [r.get(timeout=30) for r in results] == [2] * 5


def test_await_delay_async_and_aget_leave_the_event_loop_free(env):
    tmp_path, client = env

    @client.task(name="aioapp.nap")
    async def nap(x, seconds=0.01):  # the client's view of the task: for .delay_async()
        await asyncio.sleep(seconds)
        return x

    async def main() -> tuple[list[int], list[float]]:
        ticks: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(nap.delay_async(i, 0.5) for i in range(10)))
        values = await asyncio.gather(*(r.aget(timeout=30) for r in results))
        done.set()
        await tick
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        return values, gaps

    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100"):
        started = time.monotonic()
        values, gaps = asyncio.run(main())
        elapsed = time.monotonic() - started
    assert values == list(range(10))
    assert elapsed >= 0.5
    assert len(gaps) >= 30 and max(gaps) < 0.25, (len(gaps), max(gaps))


def test_many_long_agets_do_not_starve_other_calls(env):
    """Waiting is done by one thread for every aget(): many coroutines awaiting long tasks do
    not hold the loop's default executor (which delay_async needs)."""
    tmp_path, client = env

    @client.task(name="aioapp.nap")
    async def nap(x, seconds=0.01):
        await asyncio.sleep(seconds)
        return x

    async def main() -> tuple[float, list[int]]:
        longs = [await nap.delay_async(i, 3.0) for i in range(40)]
        waiting = [asyncio.ensure_future(r.aget(timeout=30)) for r in longs]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        short = await nap.delay_async("short", 0.01)
        assert await short.aget(timeout=10) == "short"
        quick = time.monotonic() - started
        return quick, await asyncio.gather(*waiting)

    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100"):
        quick, values = asyncio.run(main())
    assert values == list(range(40))
    assert quick < 1.5, f"a short call behind 40 waiting aget()s took {quick:.2f}s"


def test_terminate_cancels_a_running_coroutine(env):
    """``AsyncWorkLoop.terminate`` (what remote control's revoke(terminate=True) calls),
    on a loop running in this process."""
    from celeriac.worker.aio import AsyncWorkLoop

    tmp_path, client = env
    worker_app = Celery("aioapp", broker=client.broker_url, backend=client.conf.result_backend,
                        set_as_current=False)
    worker_app.conf.broker_transport_options = client.conf.broker_transport_options
    worker_app.conf.result_backend_transport_options = client.conf.result_backend_transport_options

    @worker_app.task(name="aioapp.sleeper")
    async def sleeper(seconds):
        await asyncio.sleep(seconds)
        return "finished"

    loop = AsyncWorkLoop(worker_app, ["celery"], "test/aio/1", "test@host", 10)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        victim = send(client, "sleeper", 30)
        other = send(client, "sleeper", 0.5)
        wait_for(lambda: victim.id in loop.running and loop.running[victim.id].started, 20)
        assert any(a["id"] == victim.id for a in loop.active())
        assert loop.terminate(victim.id) is True
        assert loop.terminate("not-running") is False
        wait_for(lambda: victim.state == "REVOKED", 10, message="REVOKED")
        assert other.get(timeout=10) == "finished"
    finally:
        loop.stop()
        thread.join(30)
        worker_app.close()
    assert not thread.is_alive()
    assert client.broker.stats("celery").leased == 0


def test_revoke_terminate_through_remote_control(env):
    tmp_path, client = env
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "10"):
        victim = send(client, "nap", "late", 20)
        wait_for(lambda: any(a["id"] == victim.id for a in
                             sum((client.control.inspect().active() or {}).values(), [])), 20)
        started = time.monotonic()
        victim.revoke(terminate=True)
        wait_for(lambda: victim.state == "REVOKED", 10, message="REVOKED")
        assert time.monotonic() - started < 5
        assert send(client, "nap", 3).get(timeout=10) == 3


def test_warm_shutdown_waits_and_cold_shutdown_gives_messages_back(env):
    tmp_path, client = env
    marker = tmp_path / "started.txt"
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100", "-l", "info") as worker:
        warm = [send(client, "nap", i, 1.0) for i in range(20)]
        wait_for(lambda: worker.log().count("Received task") == 20, 10)
        # "Received" is logged as a batch is fetched, just before its tasks start; a warm stop
        # in between rightly gives the not-yet-started ones back: let them start (they nap 1 s)
        time.sleep(0.4)
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(20) == 0
    assert [r.get(timeout=5) for r in warm] == list(range(20))

    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100") as worker:
        cold = [send(client, "long_late", 30, str(marker)) for _ in range(5)]
        wait_for(lambda: marker.exists() and len(marker.read_text().split()) == 5, 20)
        started = time.monotonic()
        worker.signal(signal.SIGQUIT)
        worker.proc.wait(20)
        assert time.monotonic() - started < 10
    assert all(r.state == "STARTED" for r in cold)
    assert client.broker.stats("celery").ready == 5  # given back, not lost
    with WorkerProcess(tmp_path, "aioapp", "-P", "asyncio", "-c", "100"):
        assert [r.get(timeout=20) for r in cold] == ["finished"] * 5
    assert sorted(marker.read_text().split()) == sorted([r.id for r in cold] * 2)


def test_eager_async_tasks(env):
    tmp_path, client = env
    client.conf.task_always_eager = True

    @client.task(bind=True)
    async def double(self, x):
        await asyncio.sleep(0.01)
        return [x * 2, self.request.id]

    res = double.delay(21)
    assert res.get() == [42, res.id]
    res2 = double.delay(1)  # the thread's loop is reused
    assert res2.get() == [2, res2.id]

    async def from_a_coroutine() -> list:
        return double.delay(5).get()  # a running loop here: the coroutine runs in a helper thread

    assert asyncio.run(from_a_coroutine())[0] == 10

    async def awaited() -> list:
        res = await double.delay_async(4)
        return await res.aget(timeout=5)  # an EagerResult: nothing to wait for

    assert asyncio.run(awaited())[0] == 8
