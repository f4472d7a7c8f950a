"""A bulk send's messages (protocol/bulk.py) are byte for byte those the general path builds."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from celeriac import Celery
from celeriac._fastid import uuid4_many
from celeriac._resp import pack, pack_pieces
from celeriac.brokers._redis_fast import Tags
from celeriac.protocol.bulk import BulkMessages, bulk_messages
from celeriac.protocol.message import argument_cloner, build_task_message, to_kombu_json


def _app() -> Celery:
    app = Celery("bulkmsg", broker="memory://bulkmsg", set_as_current=False)

    @app.task(name="bm.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    return app


class Unrepresentable(str):
    """JSON encodes it as a string; its repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


CALLS: list[tuple[Any, Any]] = [
    ((1, 2), {}),
    ([3, 4], {"y": 5}),                                   # a list of args, kwargs
    (("é\u2028 ☃ 100%", "%s %d %(x)s"), {"ü": "\U0001f600"}),  # unicode, percent signs
    (({"a": [1, 2.5, None, True, {"b": []}]}, [[[]]]), {"k": {"n": [1, {"m": "v"}]}}),  # nested
    ((), {}),
    (None, None),
    ((1,), {}),                                           # a one-element tuple's repr
    (("x" * 3000,), {"long": "y" * 3000}),                # reprs over 1024 characters are cut
    ((float("inf"), -0.0, 10**30), {}),
]

OPTIONS: list[dict[str, Any]] = [
    {},
    {"priority": 7, "queue": "other%queue"},
    {"expires": 60, "time_limit": 30, "soft_time_limit": 20},
    {"countdown": 5},
    {"link": {"task": "bm.echo", "args": [1], "kwargs": {}, "options": {}, "subtask_type": None,
              "immutable": False}},
    {"reply_to": "r%eply", "root_id": "root-1", "parent_id": "parent-1", "retries": 2},
]


def _general(app: Celery, args: Any, kwargs: Any, task_id: str, options: dict[str, Any],
             proto: Any) -> Any:
    """The message the general path builds for this call, with this id; time-dependent
    values (eta, expires: computed when a message is built) taken from the prototype."""
    env, _q, _nb = app._message("bm.echo", args, kwargs, task_id, app.tasks["bm.echo"], dict(options))
    assert env.render is None
    for key in ("eta", "expires"):
        env.headers[key] = proto.headers[key]
    if "expiration" in proto.properties:
        env.properties["expiration"] = proto.properties["expiration"]
    return env


@pytest.mark.parametrize("options", OPTIONS)
def test_bulk_text_is_the_general_paths_text(options: dict[str, Any]) -> None:
    app = _app()
    opts = dict(options)
    proto, queue, _nb = app._message("bm.echo", (0,), {}, None, app.tasks["bm.echo"], opts)
    embed = app._bulk_embed(opts)
    assert embed is not None
    batch = bulk_messages(proto, embed, CALLS)
    assert isinstance(batch, BulkMessages) and batch._split is not None
    tags = [str(uuid.uuid4()) for _ in CALLS]
    texts = batch.kombu_json("", queue, tags)
    assert len(batch) == len(texts) == len(CALLS) and len(set(batch.ids)) == len(CALLS)
    for (args, kwargs), task_id, tag, text, env in zip(CALLS, batch.ids, tags, texts, batch.envelopes(),
                                                      strict=True):
        full = _general(app, args, kwargs, task_id, options, proto)
        assert text == to_kombu_json(full, "", queue, tag)   # the general encoder, byte for byte
        assert text == to_kombu_json(env, "", queue, tag)    # and the envelope form
        assert env.body == full.body and env.headers == full.headers and env.properties == full.properties
        assert text.isascii()
    # another exchange and routing key: the same messages there
    again = batch.kombu_json("ex%", "rk%s", tags)
    assert again[0] == to_kombu_json(batch.envelopes()[0], "ex%", "rk%s", tags[0])


def test_a_broken_repr_is_reported_as_the_general_path_does() -> None:
    app = _app()
    proto, queue, _nb = app._message("bm.echo", (0,), {}, None, app.tasks["bm.echo"], {})
    batch = bulk_messages(proto, {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
                          [((Unrepresentable("a"),), {"w": Unrepresentable("b")})])
    assert batch is not None
    env = batch.envelopes()[0]
    text = batch.kombu_json("", queue, ["t"])[0]
    assert text == to_kombu_json(env, "", queue, "t")
    headers = json.loads(text)["headers"]
    assert headers["argsrepr"].startswith("<unrepresentable tuple") and \
        headers["kwargsrepr"].startswith("<unrepresentable dict")

    class Odd(dict):  # type: ignore[type-arg]
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    batch = bulk_messages(proto, {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
                          [((2,), Odd(a=1))])
    assert batch is not None
    text = batch.kombu_json("", queue, ["t"])[0]
    assert text == to_kombu_json(batch.envelopes()[0], "", queue, "t")
    assert json.loads(text)["headers"]["kwargsrepr"] == "{'a': 1}"  # a copy as a plain dict, as clone() makes


def test_no_bulk_messages_for_compressed_prototypes() -> None:
    env = build_task_message("bm.echo", "x", (1,), {}, compression="zlib")
    assert argument_cloner(env, {}) is None
    assert bulk_messages(env, {}, [((1,), {})]) is None


def test_uuid4_many() -> None:
    for n in (0, 1, 255, 256, 257, 1000):
        ids = uuid4_many(n)
        assert len(ids) == n and len(set(ids)) == n
        for s in ids:
            u = uuid.UUID(s)
            assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122


def test_tags_many_continue_the_sequence() -> None:
    tags = Tags()
    made = [tags(), *tags.many(3), tags(), *tags.many(0)]
    assert len(set(made)) == 5
    assert [int(t[-12:], 16) for t in made] == list(range(int(made[0][-12:], 16), int(made[0][-12:], 16) + 5))


@pytest.mark.parametrize("args", [("LPUSH", "k", "x" * 100, "y", ""), ("LPUSH", "ké", "é", "b"), ("PING",)])
def test_pack_pieces_are_pack(args: tuple[str, ...]) -> None:
    assert b"".join(pack_pieces(*args)) == pack(*args)


def test_without_a_template_the_text_is_encoded_in_full() -> None:
    """When the prototype's text does not split into a template (kombu_template_split is
    None), kombu_json encodes each envelope: the same text."""
    app = _app()
    proto, queue, _nb = app._message("bm.echo", (0,), {}, None, app.tasks["bm.echo"], {})
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    plain = BulkMessages(proto, argument_cloner(proto, embed, None), None, embed, CALLS)
    assert all(env.render is None for env in plain.envelopes())
    templated = BulkMessages(proto, argument_cloner(proto, embed), plain._split, embed, CALLS)
    templated.ids = plain.ids
    fast = bulk_messages(proto, embed, CALLS)
    assert fast is not None
    fast.ids = plain.ids
    tags = [f"tag-{i}" for i in range(len(CALLS))]
    assert plain.kombu_json("", queue, tags) == fast.kombu_json("", queue, tags) == \
        [to_kombu_json(env, "", queue, tag) for env, tag in zip(templated.envelopes(), tags, strict=True)]
