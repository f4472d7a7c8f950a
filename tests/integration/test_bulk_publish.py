"""``apply_many`` through each broker's ``publish_bulk``: what is stored is byte for byte the
text the general path makes for the same id and tag, and bulk sends with options (which take
the general path) keep working."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import REDIS_URL, _redis_up

from celeriac import Celery
from celeriac.protocol.message import from_kombu_json, to_kombu_json

CALLS: list[Any] = [
    (1, 2),
    ((3, 4), {"y": 5}),
    (("é\u2028 ☃ 100%", "%s"), {"ü": "\U0001f600"}),
    (({"a": [1, 2.5, None, True, {"b": []}]}, [[[]]]), {"k": {"n": [1, {"m": "v"}]}}),
    (),
]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celery]:
    kind = request.param
    prefix = f"tb{uuid.uuid4().hex[:10]}:"
    if kind == "redis":
        if not _redis_up():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        url = REDIS_URL
    else:
        url = f"sqlite:///{tmp_path}/b.db" if kind == "sqlite" else f"memory://{uuid.uuid4().hex}"
    a = Celery("bulkpub", broker=url, set_as_current=False)
    a.conf.broker_transport_options = {"global_keyprefix": prefix}

    @a.task(name="bp.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    yield a
    a.broker.close()
    if kind == "redis":
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()


def _stored(app: Celery, queue: str = "celery") -> list[str]:
    """The kombu JSON texts the broker holds for ``queue`` (oldest first)."""
    url = app.conf.broker_url
    if url.startswith("redis"):
        r = redis.Redis.from_url(REDIS_URL)
        prefix = app.conf.broker_transport_options["global_keyprefix"]
        keys = sorted(k.decode() for k in r.keys(f"{prefix}{queue}*") if not k.decode().endswith(".delayed"))
        texts = [t.decode() for k in keys for t in reversed(r.lrange(k, 0, -1))]
        r.close()
        return texts
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as c:
            return [row[0] for row in c.execute(
                "SELECT payload FROM celeriac_messages WHERE queue = ? AND state = 0 ORDER BY rowid", (queue,))]
    got = app.broker.fetch([queue], 1000, 0.5, "c")  # memory: the envelopes themselves
    return [to_kombu_json(d.envelope, "", queue, d.tag) for d in got]


def _general_text(app: Celery, text: str, options: dict[str, Any], queue: str = "celery") -> str:
    """The general path's text for the call that ``text`` holds, with its id and tag."""
    env = from_kombu_json(text)
    args, kwargs, _embed = json.loads(env.body)
    task_id = env.headers["id"]
    full, _q, _nb = app._message("bp.echo", args, kwargs, task_id, app.tasks["bp.echo"], dict(options))
    for key in ("eta", "expires"):  # made when the message is built
        full.headers[key] = env.headers[key]
    if "expiration" in env.properties:
        full.properties["expiration"] = env.properties["expiration"]
    return to_kombu_json(full, env.properties["delivery_info"]["exchange"], queue, env.properties["delivery_tag"])


@pytest.mark.parametrize("options", [{}, {"priority": 7, "expires": 60}, {"queue": "other"}])
def test_bulk_sent_messages_are_the_general_paths(app: Celery, options: dict[str, Any]) -> None:
    results = app.tasks["bp.echo"].apply_many(CALLS * 40, **options)
    queue = options.get("queue", "celery")
    texts = _stored(app, queue)
    assert len(texts) == len(results) == len(CALLS) * 40
    ids = [json.loads(t)["headers"]["id"] for t in texts]
    assert sorted(ids) == sorted(r.id for r in results) and len(set(ids)) == len(ids)
    for text in texts:
        assert text == _general_text(app, text, options, queue)
    if not app.conf.broker_url.startswith("memory"):
        app.broker.purge(queue)


def test_bulk_sends_with_options_take_the_general_path(app: Celery) -> None:
    echo = app.tasks["bp.echo"]
    link = app.signature("bp.echo", args=(9,))
    sent = echo.apply_many([(1,), (2,)], countdown=30, link=link, headers={"h": "v"})
    stats = app.broker.stats("celery")
    assert stats.delayed == 2 and stats.ready == 0
    due = echo.apply_many([(3,), (4,)], headers={"h": "w"}, link=link)
    texts = _stored(app)  # the ready ones
    assert len(texts) == 2
    for text, result in zip(texts, due, strict=True):
        env = from_kombu_json(text)
        assert env.headers["id"] == result.id and env.headers["h"] == "w"
        assert json.loads(env.body)[2]["callbacks"][0]["task"] == "bp.echo"
    assert {r.id for r in sent}.isdisjoint(r.id for r in due)


@pytest.mark.parametrize("lane_busy", [False, True])
def test_redis_bulk_declares_its_queue_and_works_with_the_lane_busy(lane_busy: bool) -> None:
    """The first bulk send to a queue binds it (kombu's binding sets) in the same MULTI; with
    the fast lane held by another thread, the same commands go through the pool."""
    if not _redis_up():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"tb{uuid.uuid4().hex[:10]}:"
    a = Celery("bulkpub", broker=REDIS_URL, set_as_current=False)
    a.conf.broker_transport_options = {"global_keyprefix": prefix}
    echo = a.task(name="bp.echo")(lambda *args, **kwargs: None)
    r = redis.Redis.from_url(REDIS_URL)
    queue = f"bq{uuid.uuid4().hex[:6]}"
    try:
        lane = a.broker._lane
        if lane_busy:
            assert lane.lock.acquire(blocking=False)
        try:
            sent = echo.apply_many(CALLS * 3, queue=queue)
        finally:
            if lane_busy:
                lane.lock.release()
        assert r.exists(f"{prefix}_kombu.binding.{queue}") and r.exists(f"{prefix}_kombu.binding_permanent.{queue}")
        texts = _stored(a, queue)
        assert [json.loads(t)["headers"]["id"] for t in texts] == [s.id for s in sent]
        for text in texts:
            assert text == _general_text(a, text, {"queue": queue}, queue)
    finally:
        a.broker.close()
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
