"""The send path's shortcuts give what the general code gives (issue 4, producer path)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from celeriac import Celery
from celeriac._fastid import getpid, uuid4
from celeriac.protocol import codecs
from celeriac.protocol.message import _dumps, argument_cloner, build_task_message, to_kombu_json


def test_uuid4_is_a_random_version_4_uuid() -> None:
    ids = [uuid4() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    for s in ids[:300]:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122


def test_uuid4_and_pid_after_fork() -> None:
    before = uuid4()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, f"{uuid4()} {getpid() == os.getpid()}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id, same = os.read(r, 200).decode().split()
    os.close(r)
    os.close(w)
    assert same == "True" and child_id != before and uuid4() != child_id


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, "é\u2028", None, True, float("inf")], "b": {"c": []}},
    [[1, 2], {"k": "v"}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
])
def test_json_dumps_is_the_json_encoder(value: object) -> None:
    assert codecs.json_dumps(value) == codecs._encoder.encode(value)
    assert _dumps(value) == json.dumps(value)


def test_json_dumps_reports_circular_values_as_before() -> None:
    a: list[object] = []
    a.append(a)
    with pytest.raises(ValueError, match="Circular"):
        codecs.json_dumps(a)
    with pytest.raises(ValueError, match="Circular"):
        _dumps({"a": a})
    with pytest.raises(TypeError, match="not JSON serializable"):
        _dumps({"a": object()})


def _app() -> Celery:
    app = Celery("sendpath", broker="memory://sendpath", set_as_current=False)

    @app.task(name="sp.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    return app


def test_argument_checks_keep_their_errors() -> None:
    add = _app().tasks["sp.add"]
    add._check_arguments((1,), {})
    add._check_arguments((1, 2), {})       # the arity shortcut
    add._check_arguments((1,), {"y": 2})   # the general path
    for args, kwargs in (((), {}), ((1, 2, 3), {}), ((1,), {"z": 2})):
        with pytest.raises(TypeError, match="sp.add"):
            add._check_arguments(args, kwargs)


@pytest.mark.parametrize("options", [{}, {"expires": 60, "priority": 7}, {"countdown": 5, "link": None}])
def test_bulk_clones_are_the_messages_the_general_path_builds(options: dict[str, object]) -> None:
    app = _app()
    task = app.tasks["sp.add"]
    env, _q, _nb = app._message("sp.add", (1, 2), {}, None, task, dict(options))
    clone = app._bulk_cloner(env, dict(options))
    assert clone is not None
    made = clone([3, 4], {"y": 5})
    full, _q, _nb = app._message("sp.add", [3, 4], {"y": 5}, made.headers["id"], task, dict(options))
    assert made.body == full.body
    assert made.headers == {**full.headers, "eta": made.headers["eta"], "expires": made.headers["expires"]}
    assert {k: v for k, v in made.properties.items() if k != "expiration"} == \
        {k: v for k, v in full.properties.items() if k != "expiration"}
    assert made.headers["root_id"] == made.headers["id"] and made.properties["correlation_id"] == made.headers["id"]
    assert json.loads(to_kombu_json(made, "", "celery", "t"))["headers"]["argsrepr"] == "(3, 4)"


def test_no_clones_for_compressed_or_routed_by_function() -> None:
    app = _app()
    task = app.tasks["sp.add"]
    env = build_task_message("sp.add", "x", (1,), {}, compression="zlib")
    assert argument_cloner(env, {}) is None
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None: {"queue": f"q{args[0]}"}]
    env, queue, _nb = app._message("sp.add", (1,), {}, None, task, {})
    assert queue == "q1" and app._bulk_cloner(env, {}) is None
