"""A lone ``wait_for`` on Redis waits on its own RESP3 connection (``backends/_redis_direct.py``):
SUBSCRIBE and GET in one write, the PUBLISH read by the waiting thread itself."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celeriac import states
from celeriac._resp import Params
from celeriac.backends import backend_from_url
from celeriac.backends._redis_direct import DirectWait
from celeriac.backends.redis import RedisBackend
from celeriac.exceptions import OperationalError, TimeoutError
from celeriac.protocol.results import make_meta

pytestmark = pytest.mark.redis
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def make() -> Iterator[Callable[..., RedisBackend]]:
    made: list[RedisBackend] = []
    prefix = f"td{uuid.uuid4().hex[:10]}:"

    def factory(url: str = REDIS_URL, **options: Any) -> RedisBackend:
        b = backend_from_url(url, options={"global_keyprefix": prefix, **options})
        assert isinstance(b, RedisBackend)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def tid() -> str:
    return str(uuid.uuid4())


def store_later(backend: RedisBackend, task_id: str, value: Any, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        backend.store_meta(make_meta(task_id, states.SUCCESS, value, ready=True))
    th = threading.Thread(target=run)
    th.start()
    return th


def test_lone_waiter_is_woken_without_the_listener_thread(make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(), make()
    for n in range(3):   # the connection is used again: the previous wait's replies are skipped
        t = tid()
        th = store_later(writer, t, n, 0.2)
        start = time.monotonic()
        assert waiter.wait_for(t, timeout=10)["result"] == n
        assert time.monotonic() - start < 2.0
        th.join()
    assert waiter._listener_obj is None     # no listener, so no listener thread


def test_finished_result_returns_at_once(make: Callable[..., RedisBackend]) -> None:
    b = make()
    t = tid()
    b.store_meta(make_meta(t, states.SUCCESS, "done", ready=True))
    start = time.monotonic()
    assert b.wait_for(t, timeout=5)["result"] == "done"
    assert b.wait_for(t, timeout=5)["result"] == "done"
    assert time.monotonic() - start < 0.5


def test_started_is_not_taken_for_the_result(make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(), make()
    t = tid()
    writer.store_meta(make_meta(t, states.STARTED, None, ready=False))

    def run() -> None:
        time.sleep(0.1)
        writer.store_meta(make_meta(t, states.STARTED, None, ready=False))   # published again: not ready
        time.sleep(0.1)
        writer.store_meta(make_meta(t, states.SUCCESS, 7, ready=True))
    th = threading.Thread(target=run)
    th.start()
    assert waiter.wait_for(t, timeout=10)["result"] == 7
    th.join()


def test_timeout_is_honoured(make: Callable[..., RedisBackend]) -> None:
    b = make()
    t = tid()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=t):
        b.wait_for(t, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2.0
    writer = make()
    th = store_later(writer, t, "later", 0.1)   # the connection is still good afterwards
    assert b.wait_for(t, timeout=10)["result"] == "later"
    th.join()


class _StoreAfterWrite:
    """A real socket that, right after the waiter's SUBSCRIBE + GET went out, has another
    connection store the result: inside the window a subscription and a read can race in."""

    def __init__(self, sock: socket.socket, store: Callable[[], None]) -> None:
        self._sock, self._store = sock, store

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        if b"$9\r\nSUBSCRIBE\r\n" in data:     # (not UNSUBSCRIBE: $11)
            self._store()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_result_stored_right_after_the_pipelined_write_is_not_missed(make: Callable[..., RedisBackend]) -> None:
    writer = make()
    current: list[str] = []

    def opener() -> tuple[Any, Any]:
        sock = socket.create_connection(("127.0.0.1", 6379), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        store = lambda: writer.store_meta(make_meta(current[-1], states.SUCCESS, current[-1], ready=True))  # noqa: E731
        return _StoreAfterWrite(sock, store), None

    direct = DirectWait(Params(opener=opener, socket_timeout=5))
    try:
        for _ in range(50):
            t = tid()
            current.append(t)
            start = time.monotonic()
            meta = direct.wait(writer.key_for(t).encode(), writer.decode, time.monotonic() + 10)
            assert meta is not None and meta["result"] == t
            assert time.monotonic() - start < 1.0   # not found by the 5 s re-read
    finally:
        direct.close()


def test_many_threads_waiting_at_once(make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(), make()
    ids = [tid() for _ in range(30)]
    out: dict[str, Any] = {}

    def wait(t: str) -> None:
        out[t] = waiter.wait_for(t, timeout=20)["result"]

    threads = [threading.Thread(target=wait, args=(t,)) for t in ids]
    for th in threads:
        th.start()
    time.sleep(0.3)
    for n, t in enumerate(ids):
        writer.store_meta(make_meta(t, states.SUCCESS, n, ready=True))
    for th in threads:
        th.join(30)
    assert out == {t: n for n, t in enumerate(ids)}
    listener = waiter._listener_obj
    assert listener is not None and not listener.boxes   # the others went through the listener


def test_redis_restarted_mid_wait(server: Any, make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(server.url()), make(server.url())
    t = tid()
    out: list[Any] = []
    th = threading.Thread(target=lambda: out.append(waiter.wait_for(t, timeout=30)["result"]))
    th.start()
    time.sleep(0.3)
    server.restart()
    time.sleep(0.5)
    writer.store_meta(make_meta(t, states.SUCCESS, "after-restart", ready=True))
    th.join(35)
    assert out == ["after-restart"]
    th = store_later(writer, t2 := tid(), "next", 0.2)   # and the next wait is direct again
    assert waiter.wait_for(t2, timeout=10)["result"] == "next"
    th.join()


def test_redis_gone_mid_wait_is_an_operational_error(server: Any, make: Callable[..., RedisBackend]) -> None:
    waiter = make(server.url(), socket_connect_timeout=0.5)
    t = tid()
    out: list[BaseException] = []

    def wait() -> None:
        try:
            waiter.wait_for(t, timeout=60)
        except BaseException as exc:
            out.append(exc)

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.3)
    server.kill()
    th.join(40)
    server.start()   # for the fixture's kill
    assert not th.is_alive()
    assert len(out) == 1 and isinstance(out[0], OperationalError), out


def test_messages_left_on_the_previous_channel_are_skipped(make: Callable[..., RedisBackend]) -> None:
    waiter, writer = make(), make()
    t1, t2 = tid(), tid()
    writer.store_meta(make_meta(t1, states.SUCCESS, "first", ready=True))
    assert waiter.wait_for(t1, timeout=5)["result"] == "first"
    # t1's channel is still subscribed (unsubscribed with the next wait): this is published to us
    writer.store_meta(make_meta(t1, states.FAILURE, None, ready=True))
    th = store_later(writer, t2, "second", 0.2)
    assert waiter.wait_for(t2, timeout=10)["result"] == "second"
    th.join()
    assert waiter.wait_for(t1, timeout=5)["result"] == "first"   # SUCCESS is kept


def test_an_error_reply_falls_back_and_the_next_wait_is_not_confused(make: Callable[..., RedisBackend]) -> None:
    import redis

    waiter, writer = make(), make()
    bad, t = tid(), tid()
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        raw.rpush(waiter.key_for(bad), "x")     # GET answers WRONGTYPE
        with pytest.raises(TimeoutError):
            waiter.wait_for(bad, timeout=0.3)
        th = store_later(writer, t, "fine", 0.1)
        assert waiter.wait_for(t, timeout=10)["result"] == "fine"
        th.join()
    finally:
        raw.delete(waiter.key_for(bad))
        raw.close()


def test_timeout_zero_still_reads_the_key_once(make: Callable[..., RedisBackend]) -> None:
    b = make()
    t = tid()
    with pytest.raises(TimeoutError):
        b.wait_for(t, timeout=0)
    b.store_meta(make_meta(t, states.SUCCESS, "there", ready=True))
    assert b.wait_for(t, timeout=0)["result"] == "there"
