"""Protocol v2 encode/decode, v1 and hybrid bodies, codecs and exceptions: pure, no broker."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from celeriac.exceptions import ContentDisallowed, DecodeError, InvalidTaskError, NotRegistered
from celeriac.protocol import codecs
from celeriac.protocol.message import (
    build_task_message,
    decode_task_message,
    from_kombu_json,
    to_kombu_json,
)
from celeriac.protocol.results import exception_from_dict, exception_to_dict, make_meta

JSON_ONLY = frozenset({"application/json"})
CAPTURED = ('{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", '
            '"content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "wiretasks.add", '
            '"id": "16d656aa-9590-4989-989a-6fa4c2d24fab", "shadow": null, "eta": null, "expires": null, "group": null, '
            '"group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "16d656aa-9590-4989-989a-6fa4c2d24fab", '
            '"parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen16763@vm", "ignore_result": false, '
            '"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": '
            '"16d656aa-9590-4989-989a-6fa4c2d24fab", "reply_to": "27888168-0f15-3298-a396-8fe4f9a82fa7", "delivery_mode": 2, '
            '"delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", '
            '"delivery_tag": "451f0ab9-e905-448c-8ce6-d128382b8d36"}}')


def test_captured_celery_message_decodes():
    msg = decode_task_message(from_kombu_json(CAPTURED), JSON_ONLY)
    assert (msg.task, msg.id, msg.args, msg.kwargs) == ("wiretasks.add", "16d656aa-9590-4989-989a-6fa4c2d24fab", [2, 3], {})
    assert msg.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert msg.root_id == msg.id and msg.retries == 0 and msg.timelimit == (None, None)


def test_our_message_matches_celery_layout():
    env = build_task_message("wiretasks.add", "16d656aa-9590-4989-989a-6fa4c2d24fab", (2, 3),
                             reply_to="27888168-0f15-3298-a396-8fe4f9a82fa7")
    ours = json.loads(to_kombu_json(env, "", "celery", "451f0ab9-e905-448c-8ce6-d128382b8d36"))
    theirs = json.loads(CAPTURED)
    assert ours["body"] == theirs["body"]
    assert list(ours["headers"]) == list(theirs["headers"])  # the same 19 headers, same order
    for key in ("lang", "task", "id", "eta", "expires", "retries", "timelimit", "root_id", "argsrepr", "kwargsrepr"):
        assert ours["headers"][key] == theirs["headers"][key]
    assert ours["properties"] == theirs["properties"]
    assert set(ours) == set(theirs)


def test_options_land_in_headers():
    eta = datetime(2030, 1, 1, tzinfo=timezone.utc)
    exp = datetime.now(timezone.utc) + timedelta(seconds=60)
    env = build_task_message("t", "id1", (1,), {"k": 2}, eta=eta, expires=exp, time_limit=30, soft_time_limit=20,
                             shadow="sh", priority=5, retries=2, extra_headers={"x-custom": "v"})
    h = env.headers
    assert h["eta"] == "2030-01-01T00:00:00+00:00" and h["timelimit"] == [30, 20] and h["shadow"] == "sh"
    assert h["x-custom"] == "v" and h["retries"] == 2
    assert env.properties["priority"] == 5 and 58000 <= int(env.properties["expiration"]) <= 60000
    msg = decode_task_message(env, JSON_ONLY)
    assert msg.eta == eta and msg.timelimit == (30, 20) and msg.kwargs == {"k": 2}


def test_protocol_v1_and_hybrid_bodies():
    v1 = {"task": "t.add", "id": "v1id", "args": [7, 8], "kwargs": {}, "retries": 1,
          "eta": "2026-11-21T07:42:32.475044+00:00", "expires": None, "utc": True, "callbacks": None,
          "errbacks": None, "timelimit": [None, None], "taskset": "g1", "chord": None}
    env = from_kombu_json(json.dumps({"body": base64.b64encode(json.dumps(v1).encode()).decode(),
                                      "content-type": "application/json", "content-encoding": "utf-8",
                                      "headers": {}, "properties": {"body_encoding": "base64"}}))
    msg = decode_task_message(env, JSON_ONLY)
    assert (msg.task, msg.id, msg.args, msg.retries, msg.group) == ("t.add", "v1id", [7, 8], 1, "g1")
    hybrid = from_kombu_json(json.dumps({"body": json.dumps({"args": [1], "kwargs": {"a": 2}}),
                                         "headers": {"task": "t.x", "id": "h1"}, "properties": {}}))
    msg = decode_task_message(hybrid, JSON_ONLY)
    assert msg.args == [1] and msg.kwargs == {"a": 2}


@pytest.mark.parametrize("mutate, error", [
    (lambda e: setattr(e, "body", b"not json"), DecodeError),
    (lambda e: setattr(e, "body", b'"a string"'), InvalidTaskError),
    (lambda e: setattr(e, "body", b"[1, 2]"), InvalidTaskError),
    (lambda e: setattr(e, "content_type", "application/x-python-serialize"), ContentDisallowed),
    (lambda e: e.headers.pop("id"), InvalidTaskError),
])
def test_bad_messages_raise_clear_errors(mutate, error):
    env = build_task_message("t", "id", (1,))
    mutate(env)
    with pytest.raises(error):
        decode_task_message(env, JSON_ONLY)


def test_compression_round_trip():
    env = build_task_message("t", "id", ("x" * 1000,), compression="zlib")
    assert env.headers["compression"] == "application/x-gzip" and len(env.body) < 200
    assert decode_task_message(env, JSON_ONLY).args == ["x" * 1000]


def test_typed_json_values_round_trip():
    value = {"when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "d": Decimal("1.5"),
             "u": uuid.UUID(int=5), "b": b"bytes", "raw": b"\xff\x00", "set": {1}}
    ct, enc, data = codecs.dumps(value)
    back = codecs.loads(data, ct, enc)
    assert back == {**value, "set": [1]}


def test_exceptions_round_trip_and_celery_module_names():
    d = exception_to_dict(ValueError("kaput"))
    assert d == {"exc_type": "ValueError", "exc_message": ["kaput"], "exc_module": "builtins"}
    assert repr(exception_from_dict(d)) == "ValueError('kaput')"
    nr = exception_to_dict(NotRegistered("x.y"))
    assert nr["exc_module"] == "celery.exceptions"
    assert isinstance(exception_from_dict(nr), NotRegistered)
    unknown = exception_from_dict({"exc_type": "FancyError", "exc_message": ["m"], "exc_module": "nowhere.mod"})
    assert type(unknown).__name__ == "FancyError" and unknown.args == ("m",)


def test_meta_shape():
    meta = make_meta("tid", "SUCCESS", 5, ready=True)
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert meta["date_done"].endswith("+00:00")


def test_utcnow_iso_is_datetime_isoformat():
    from datetime import datetime, timezone

    from celeriac.protocol.results import utcnow_iso
    for _ in range(2000):
        before = datetime.now(timezone.utc)
        text = utcnow_iso()
        after = datetime.now(timezone.utc)
        parsed = datetime.fromisoformat(text)
        assert parsed.isoformat() == text  # the same text isoformat() makes, "+00:00" included
        assert before <= parsed <= after
