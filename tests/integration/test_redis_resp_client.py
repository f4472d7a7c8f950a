"""Our RESP client (``celeriac/_resp.py``) against a throw-away redis-server: AUTH and
SELECT on connect, reply types, pipelines and transactions, NOSCRIPT recovery, blocking
reads longer than the socket timeout, pub/sub, the pool's limit, fork safety and a
server restart.  (The broker and backend tests cover it too, through their own calls.)"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import pytest
from support import Server

from celeriac._redis_url import connect, map_errors
from celeriac._resp import (
    AuthenticationError,
    Client,
    ConnectionError,
    NoScriptError,
    PubSub,
    ResponseError,
    Script,
)
from celeriac.exceptions import OperationalError

pytestmark = pytest.mark.redis


def client(server: Server, url: str | None = None, **options: Any) -> Client:
    return connect(url or server.url(), options).client


def test_replies_come_back_raw(server: Server) -> None:
    c = client(server, server.url(3))
    assert c.execute("PING") == b"PONG"
    assert c.execute("SET", "k", "v") == b"OK"
    assert c.execute("GET", "k") == b"v" and c.execute("GET", "nope") is None
    assert c.execute("SADD", "s", "a", "b") == 2 and sorted(c.execute("SMEMBERS", "s")) == [b"a", b"b"]
    assert c.execute("ZADD", "z", 1.5, "m") == 1
    assert c.execute("ZRANGE", "z", 0, -1, "WITHSCORES") == [b"m", b"1.5"]
    assert c.execute("DBSIZE") == 3 and server.raw.dbsize() == 0  # SELECT 3 on connect
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        c.execute("LPUSH", "k", "x")
    assert c.execute("GET", "k") == b"v"  # an error reply leaves the connection usable
    c.close()


def test_password_and_acl_user(server: Server) -> None:
    server.raw.execute_command("ACL", "SETUSER", "alice", "on", ">wonder", "~*", "+@all")
    c = client(server, f"redis://alice:wonder@127.0.0.1:{server.port}/1")
    assert c.execute("PING") == b"PONG"
    bad = client(server, f"redis://alice:nope@127.0.0.1:{server.port}/1")
    with pytest.raises(AuthenticationError, match=f"127.0.0.1:{server.port}"):
        bad.execute("PING")
    conn = connect(f"redis://alice:nope@127.0.0.1:{server.port}/1")
    try:  # as the broker and backend report it
        with pytest.raises(OperationalError, match=f"WRONGPASS.*|127.0.0.1:{server.port}"), map_errors(conn.where):
            conn.client.execute("PING")
    finally:
        conn.close()
    server.raw.config_set("requirepass", "s3cret")
    with_pw = client(server, f"redis://:s3cret@127.0.0.1:{server.port}/0")
    anonymous = client(server)
    try:
        assert with_pw.execute("PING") == b"PONG"
        with pytest.raises(ResponseError, match="NOAUTH"):
            anonymous.execute("PING")
    finally:
        with_pw.execute("CONFIG", "SET", "requirepass", "")
    for x in (c, bad, with_pw, anonymous):
        x.close()


def test_pipelines_and_transactions(server: Server) -> None:
    c = client(server)
    assert c.pipeline([("SET", "a", 1), ("INCR", "a"), ("GET", "a")]) == [b"OK", 2, b"2"]
    assert c.pipeline([("INCR", "a"), ("GET", "a")], transaction=True) == [3, b"3"]
    # every reply is read before the first error is raised: the connection stays in step
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        c.pipeline([("LPUSH", "a", "x"), ("INCR", "a")])
    assert c.execute("GET", "a") == b"4"
    # a command refused while queued aborts the transaction: nothing ran
    with pytest.raises(ResponseError):
        c.pipeline([("INCR", "a"), ("SET", "a")], transaction=True)
    assert c.execute("GET", "a") == b"4"
    # a runtime error inside EXEC: the others ran (Redis has no rollback), the error is raised
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        c.pipeline([("INCR", "a"), ("LPUSH", "a", "x")], transaction=True)
    assert c.execute("GET", "a") == b"5"
    c.close()


def test_evalsha_loads_the_script_again_after_a_flush(server: Server) -> None:
    c = client(server)
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert c.evalsha(script, ["n"], [2]) == 2
    server.raw.script_flush()
    assert c.evalsha(script, ["n"], [3]) == 5
    server.raw.script_flush()
    assert c.evalsha_many(script, [(["n"], [1]), (["m"], [1])]) == [6, 1]
    server.raw.script_flush()
    with pytest.raises(NoScriptError):
        c.execute("EVALSHA", script.sha, 0)
    assert script.sha == server.raw.script_load(script.source)
    c.close()


def test_a_blocking_read_may_outlast_the_socket_timeout(server: Server) -> None:
    c = client(server, socket_timeout=0.3)
    t0 = time.monotonic()
    assert c.execute("BRPOP", "empty", 0.8, block=0.8) is None
    assert time.monotonic() - t0 >= 0.7
    assert c.execute("PING") == b"PONG"
    c.close()


def test_pubsub_channels_and_patterns(server: Server) -> None:
    c = client(server)
    ps = PubSub(c)
    ps.subscribe("ch")
    ps.psubscribe("pat.*")
    kinds = [(ps.get_message(timeout=1) or {}).get("type") for _ in range(2)]
    assert kinds == ["subscribe", "psubscribe"]
    assert ps.get_message(timeout=0.05) is None
    c.execute("PUBLISH", "ch", "one")
    c.execute("PUBLISH", "pat.x", "two")
    got = [ps.get_message(timeout=1) for _ in range(2)]
    assert got[0] == {"type": "message", "pattern": None, "channel": b"ch", "data": b"one"}
    assert got[1] == {"type": "pmessage", "pattern": b"pat.*", "channel": b"pat.x", "data": b"two"}
    ps.unsubscribe("ch")
    ps.punsubscribe()
    kinds = [(ps.get_message(timeout=1) or {}).get("type") for _ in range(2)]
    assert kinds == ["unsubscribe", "punsubscribe"]
    ps.close()
    c.close()


def test_max_connections_is_a_limit(server: Server) -> None:
    c = client(server, max_connections=1)
    with c.connection() as conn:
        assert conn.sock is not None
        with pytest.raises(ConnectionError, match="Too many connections"):
            c.execute("PING")
    assert c.execute("PING") == b"PONG"  # given back: usable again
    c.close()


def test_threads_share_a_client(server: Server) -> None:
    c = client(server)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                assert c.execute("INCR", f"t{n}") == i + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [int(server.raw.get(f"t{n}")) for n in range(4)] == [200] * 4
    c.close()


def _child(c: Client, q: Any) -> None:
    with c.connection() as conn:
        q.put((c.execute("PING"), conn.pid == os.getpid()))


def test_a_forked_child_never_uses_its_parents_socket(server: Server) -> None:
    c = client(server)
    with c.connection() as conn:
        parent_sock = conn.sock
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(c, q))
    p.start()
    assert q.get(timeout=10) == (b"PONG", True)
    p.join(10)
    with c.connection() as conn:  # the parent's connection is untouched by the child
        assert conn.sock is parent_sock
    assert c.execute("PING") == b"PONG"
    c.close()


def test_a_server_restart_is_noticed_and_survived(server: Server) -> None:
    c = client(server)
    assert c.execute("SET", "x", 1) == b"OK"
    server.kill()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{server.port}"):
        c.execute("GET", "x")
    server.start()
    assert c.execute("GET", "x") is None  # an empty server, on a fresh connection
    server.restart()
    assert c.execute("PING") == b"PONG"  # the idle connection was stale: replaced, not written to
    c.close()


def test_a_connection_to_a_demoted_master_is_dropped(server: Server) -> None:
    """After a failover the old master answers writes with READONLY: that connection is closed,
    so the next one is opened anew (through Sentinel, to the new master)."""
    other = Server()
    c = client(server)
    try:
        assert c.execute("PING") == b"PONG"
        server.raw.execute_command("REPLICAOF", "127.0.0.1", other.port)
        with pytest.raises(ResponseError, match="READONLY"):
            c.execute("SET", "k", "v")
        assert [conn.sock for conn in c._idle] == [None]
        server.raw.execute_command("REPLICAOF", "NO", "ONE")
        assert c.execute("SET", "k", "v") == b"OK"
    finally:
        c.close()
        other.kill()
