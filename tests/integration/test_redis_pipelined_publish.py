"""Pipelined single publishes on Redis (brokers/_redis_fast.py): a ``publish()`` returns
once its command is written, and its reply is read later.  What must still hold: a
message Redis refuses is reported (naming its task id), a broken connection loses
nothing and duplicates nothing already confirmed, other connections see every
returned publish, and ``confirm_publish=True`` waits for each reply."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Server
from test_redis_hot_path import env

from celeriac.brokers import broker_from_url
from celeriac.brokers._redis_fast import PEEK_AFTER, WINDOW, PublishFailed
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import OperationalError


@pytest.fixture
def broker(server: Server) -> Iterator[RedisBroker]:
    b = broker_from_url(server.url())
    assert isinstance(b, RedisBroker)
    yield b
    b.close()


def test_publish_does_not_wait_for_the_reply_and_others_still_see_it(server: Server, broker: RedisBroker) -> None:
    broker.publish(env(0), "q")                  # declares the queue (a synchronous write)
    for i in range(1, 10):
        broker.publish(env(i), "q")
    assert broker._lane.pending                  # the last one's reply is not read yet (those that
                                                 # had arrived were read by the next publish)
    assert server.raw.llen("q") == 10            # yet Redis has them all
    assert broker.stats("q").ready == 10         # a command of ours confirms them first
    assert not broker._lane.pending


def test_replies_are_read_in_windows(broker: RedisBroker) -> None:
    broker.publish(env(0), "q")
    for i in range(3 * WINDOW):
        broker.publish(env(i), "q")
    assert len(broker._lane.pending) < WINDOW


def test_a_refused_publish_is_raised_by_the_next_one_naming_its_task(server: Server, broker: RedisBroker) -> None:
    broker.publish(env(0), "q")
    assert broker.stats("q").ready == 1          # (confirms it before the raw client's writes)
    server.raw.delete("q")
    server.raw.set("q", "not a list")            # LPUSH now fails inside the transaction
    refused = env(1)
    broker.publish(refused, "q")                 # returns: the refusal is not read yet
    time.sleep(0.05)
    with pytest.raises((PublishFailed, OperationalError)) as err:
        for i in range(PEEK_AFTER + 1):          # read once PEEK_AFTER are unconfirmed
            broker.publish(env(2 + i), "q")
    failed = err.value if isinstance(err.value, PublishFailed) else err.value.__cause__
    assert isinstance(failed, PublishFailed)
    assert failed.failures[0][0] == refused.headers["id"]        # first, and named in the text
    assert refused.headers["id"] in str(err.value) and "WRONGTYPE" in str(err.value)
    server.raw.delete("q")
    broker.publish(env(3), "q")
    assert broker.stats("q").ready == 1


def test_confirm_publish_option_waits_for_each_reply(server: Server) -> None:
    b = broker_from_url(server.url(), options={"confirm_publish": True})
    try:
        b.publish(env(0), "q")
        b.publish(env(1), "q")
        assert not b._lane.pending               # type: ignore[attr-defined]
        server.raw.delete("q")
        server.raw.set("q", "x")
        bad = env(2)
        with pytest.raises(OperationalError, match="WRONGTYPE"):
            b.publish(bad, "q")                  # raised by the call that sent it
    finally:
        b.close()


def test_a_killed_connection_loses_nothing_and_duplicates_nothing(server: Server, broker: RedisBroker) -> None:
    ids = []
    for i in range(20):
        e = env(i)
        ids.append(e.headers["id"])
        broker.publish(e, "q")
    server.raw.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.05)
    for i in range(20, 40):                      # the first of these finds the connection gone
        e = env(i)
        ids.append(e.headers["id"])
        broker.publish(e, "q")
    got = [d.envelope.headers["id"] for d in broker.fetch(["q"], 100, 0.5, "c1")]
    assert sorted(got) == sorted(ids)            # every message once


def test_messages_a_dead_server_never_read_are_sent_again(server: Server, broker: RedisBroker) -> None:
    """The server stops reading (SIGSTOP), takes ten publishes into its socket buffer and
    dies (SIGKILL): they were never run.  The next publish finds the connection dead with
    their replies owed and sends them again on a new connection: nothing is lost."""
    broker.publish(env(0), "q")
    server.raw.delete("q")
    server.proc.send_signal(signal.SIGSTOP)
    sent = []
    for i in range(10):
        e = env(i)
        sent.append(e.headers["id"])
        broker.publish(e, "q")                   # written; no reply can come
    assert len(broker._lane.pending) == 10
    server.restart()                             # SIGKILL, then an empty server on the same port
    e = env(99)
    sent.append(e.headers["id"])
    broker.publish(e, "q")
    got = [d.envelope.headers["id"] for d in broker.fetch(["q"], 100, 0.5, "c1")]
    assert sorted(got) == sorted(sent)


def test_exit_confirms_what_is_owed(server: Server, tmp_path: Path) -> None:
    """A process that publishes and exits at once: every message is in Redis, and a
    refusal read at exit is logged."""
    script = tmp_path / "pub.py"
    script.write_text(
        "import sys, uuid\n"
        "from celeriac.brokers import broker_from_url\n"
        "from celeriac.protocol.message import build_task_message\n"
        f"b = broker_from_url({server.url()!r})\n"
        "for i in range(500):\n"
        "    b.publish(build_task_message('t.add', str(uuid.uuid4()), (i, i)), 'q')\n"
        "b._lane.send(b'*3\\r\\n$5\\r\\nLPUSH\\r\\n$5\\r\\nnotal\\r\\n$1\\r\\nx\\r\\n', 1, 'the-refused-one')\n")
    server.raw.set("notal", "string")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert server.raw.llen("q") == 500
    assert "the-refused-one" in out.stderr and "WRONGTYPE" in out.stderr
