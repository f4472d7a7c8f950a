"""Redis URLs as Celery and kombu accept them, turned into clients (``_resp.Client``).

Shared by the Redis broker and the Redis result backend (like ``_sqlite.py``)::

    redis://[user:password@]host[:port][/db][?socket_timeout=5&...]
    rediss://[user:password@]host[:port][/db][?ssl_cert_reqs=required&...]     TLS
    unix:///path/to/redis.sock[?db=N]        (also redis+socket:///path, unix://:pw@/path)
    sentinel://[:password@]host:26379[/db];sentinel://host2:26379              + master_name

``options`` carries Celery's transport options: ``socket_timeout``,
``socket_connect_timeout``, ``socket_keepalive``, ``max_connections``,
``health_check_interval``, ``master_name`` and ``sentinel_kwargs`` (Sentinel), and
``ssl`` — the ``broker_use_ssl`` / ``redis_backend_use_ssl`` dict (``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ...; the ``ssl_`` prefix is
optional; ``cert_reqs`` may be an ``ssl.CERT_*`` value or "required"/"optional"/"none").
``ssl`` given with a ``redis://`` URL turns TLS on, as kombu does.

Clients never retry a command by themselves (redis-py 8 retries with back-off by
default): a retried non-idempotent script could count twice, and a retry loop
hides an outage.  The pool still replaces a stale connection when it hands it out.

Commands go through our own small client (``_resp.py``, hiredis on a plain socket):
a worker on ``redis://`` or ``unix://`` never imports redis-py (about 20 MiB per
process).  redis-py, imported only then, opens TLS connections (``rediss://``,
``ssl`` options) and finds a Sentinel-managed master; its exceptions become ours here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _resp
from .exceptions import ImproperlyConfigured, OperationalError

DEFAULT_SOCKET_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


#: URL query parameters and transport options we pass to redis-py, with their types.
_PARAMS: dict[str, Callable[[Any], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": _flag,
    "max_connections": int,
    "health_check_interval": int,
}
_TLS_NAMES = ("cert_reqs", "ca_certs", "certfile", "keyfile", "check_hostname", "ca_path", "ca_data",
              "password")


@dataclass
class RedisConnection:
    """A client, a printable name for errors (no password), and how to close it."""

    client: _resp.Client
    where: str
    db: int = 0
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


def _cert_reqs(value: Any) -> Any:
    import ssl as _ssl  # TLS only: a plain redis:// worker never loads libssl

    if value is None or isinstance(value, int):
        return _ssl.CERT_REQUIRED if value is None else value
    name = str(value).strip().lower().removeprefix("ssl.").removeprefix("cert_")
    table = {"none": _ssl.CERT_NONE, "optional": _ssl.CERT_OPTIONAL, "required": _ssl.CERT_REQUIRED}
    if name not in table:
        raise ImproperlyConfigured(f"ssl_cert_reqs must be 'required', 'optional' or 'none', not {value!r}")
    return table[name]


def tls_kwargs(tls: dict[str, Any]) -> dict[str, Any]:
    """redis-py ``ssl_*`` keyword arguments from a ``broker_use_ssl``-style dict."""
    out: dict[str, Any] = {}
    for key, value in tls.items():
        name = key.removeprefix("ssl_")
        if name not in _TLS_NAMES:
            raise ImproperlyConfigured(
                f"Unknown Redis TLS option {key!r}; known: {', '.join('ssl_' + n for n in _TLS_NAMES)}")
        if name == "cert_reqs":
            value = _cert_reqs(value)
        elif name == "check_hostname":
            value = _flag(value)
        out["ssl_" + name] = value
    return out


def _typed(name: str, value: Any, url: str) -> Any:
    try:
        return _PARAMS[name](value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"Bad value for {name!r} in Redis URL {url!r}: {value!r}") from exc


def _split_query(url: str, query: str) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(redis-py options, TLS options, db) from a URL query string."""
    opts: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    db: int | None = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "db":
            db = _db(value, url)
        elif name.startswith("ssl_"):
            tls[name] = value
        elif name in _PARAMS:
            opts[name] = _typed(name, value, url)
        else:
            raise ImproperlyConfigured(f"Unknown parameter {name!r} in Redis URL {url!r}")
    return opts, tls, db


def _db(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError as exc:
        raise ImproperlyConfigured(f"Redis URL {url!r}: the database must be a number, not {text!r}") from exc
    if db < 0:
        raise ImproperlyConfigured(f"Redis URL {url!r}: negative database number")
    return db


def _base_kwargs(options: dict[str, Any], url: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    }
    for name in _PARAMS:
        if options.get(name) is not None:
            kw[name] = _typed(name, options[name], url)
    return kw


def parse_url(url: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``("pool", connection kwargs)`` or ``("sentinel", {...})`` for a Redis URL.  The
    kwargs are redis-py's names (``host``, ``port`` or ``path``, ``db``, ``username``,
    ``password``, ``socket_*``, ...); ``ssl=True`` and ``ssl_*`` for TLS."""
    options = dict(options or {})
    tls = dict(options.get("ssl") or {})
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sentinel":
        return "sentinel", _parse_sentinel(url, options, tls)
    kw = _base_kwargs(options, url)
    parts = urlsplit(url)
    if scheme in ("unix", "redis+socket"):
        # unix:///abs/path, unix://:password@/abs/path
        path = unquote(parts.netloc.rpartition("@")[2] + parts.path)
        if not path:
            raise ImproperlyConfigured(f"Redis socket URL {url!r} names no socket path")
        kw["path"] = path
    elif scheme in ("redis", "rediss"):
        try:
            port = parts.port or 6379
        except ValueError as exc:
            raise ImproperlyConfigured(f"Bad port in Redis URL {url!r}") from exc
        kw.update(host=parts.hostname or "localhost", port=port)
        if parts.path.strip("/"):
            kw["db"] = _db(parts.path.strip("/"), url)
    else:
        raise ImproperlyConfigured(f"Not a Redis URL: {url!r} (expected redis://, rediss://, unix:// "
                                   "or sentinel://)")
    if parts.username:
        kw["username"] = unquote(parts.username)
    if parts.password:
        kw["password"] = unquote(parts.password)
    query, query_tls, db = _split_query(url, parts.query)
    kw.update(query)
    if db is not None:
        kw["db"] = db
    tls.update(query_tls)
    if scheme == "rediss" or (tls and "path" not in kw):
        kw["ssl"] = True
        kw.update(tls_kwargs(tls))
    return "pool", kw


def _parse_sentinel(url: str, options: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    master_name = options.get("master_name")
    if not master_name:
        raise ImproperlyConfigured(
            f"{url!r}: a sentinel:// URL needs the transport option 'master_name' "
            "(broker_transport_options / result_backend_transport_options)")
    hosts: list[tuple[str, int]] = []
    master_kw = _base_kwargs(options, url)
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        if not part.lower().startswith("sentinel://"):
            raise ImproperlyConfigured(f"Bad sentinel URL part {part!r} in {url!r}")
        parts = urlsplit(part)
        try:
            hosts.append((parts.hostname or "localhost", parts.port or 26379))
        except ValueError as exc:
            raise ImproperlyConfigured(f"Bad port in sentinel URL part {part!r}") from exc
        if parts.username:
            master_kw["username"] = unquote(parts.username)
        if parts.password:
            master_kw["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            master_kw["db"] = _db(parts.path.strip("/"), url)
        query, query_tls, db = _split_query(url, parts.query)
        master_kw.update(query)
        tls.update(query_tls)
        if db is not None:
            master_kw["db"] = db
    if tls:
        master_kw["ssl"] = True
        master_kw.update(tls_kwargs(tls))
    return {"hosts": hosts, "master_name": master_name, "master_kwargs": master_kw,
            "sentinel_kwargs": dict(options.get("sentinel_kwargs") or {})}


_CONNECTION_KWARGS = ("db", "username", "password", "socket_timeout", "socket_connect_timeout",
                      "socket_keepalive")


def _redis_py_opener(kw: dict[str, Any], address: Callable[[], tuple[str, int]] | None) -> Callable[[], Any]:
    """An opener for ``_resp.Params``: redis-py connects (TLS handshake, AUTH, SELECT) and
    hands over its socket.  ``address``: where the master is now (Sentinel), else kw's."""

    def open_() -> tuple[Any, Any]:
        import redis
        from redis.backoff import NoBackoff
        from redis.connection import Connection, SSLConnection
        from redis.retry import Retry

        conn_kw = {k: kw[k] for k in _CONNECTION_KWARGS if k in kw}
        conn_kw.update((k, v) for k, v in kw.items() if k.startswith("ssl_"))
        try:
            host, port = address() if address is not None else (kw["host"], kw["port"])
            cls = SSLConnection if kw.get("ssl") else Connection
            conn = cls(host=host, port=port, retry=Retry(NoBackoff(), 0), **conn_kw)
            conn.connect()
        except redis.exceptions.AuthenticationError as exc:
            raise _resp.AuthenticationError(f"{type(exc).__name__}: {exc}") from exc
        except redis.exceptions.TimeoutError as exc:
            raise _resp.TimeoutError(f"{type(exc).__name__}: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise _resp.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        return conn._sock, conn

    return open_


def _params(kw: dict[str, Any], **extra: Any) -> _resp.Params:
    names = ("host", "port", "path", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
             "socket_keepalive", "max_connections", "health_check_interval")
    return _resp.Params(**{k: kw[k] for k in names if k in kw}, **extra)


class _SentinelMaster:
    """Where a Sentinel-managed master is now, asked of the sentinels (redis-py) at each connect."""

    def __init__(self, kw: dict[str, Any], where: str) -> None:
        self.kw, self.where = kw, where
        self.lock = threading.Lock()
        self.sentinel: Any = None

    def address(self) -> tuple[str, int]:
        import redis
        from redis.sentinel import Sentinel

        kw, mkw = self.kw, self.kw["master_kwargs"]
        with self.lock:
            if self.sentinel is None:
                self.sentinel = Sentinel(kw["hosts"], sentinel_kwargs={
                    "socket_timeout": mkw["socket_timeout"],
                    "socket_connect_timeout": mkw["socket_connect_timeout"], **kw["sentinel_kwargs"]})
            sentinel = self.sentinel
        try:
            return sentinel.discover_master(kw["master_name"])  # type: ignore[no-any-return]
        except redis.exceptions.RedisError as exc:
            raise _resp.ConnectionError(f"{self.where}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            sentinel, self.sentinel = self.sentinel, None
        if sentinel is not None:
            sentinel.close()


def connect(url: str, options: dict[str, Any] | None = None) -> RedisConnection:
    """A client for ``url``; connections open lazily, on first use."""
    kind, kw = parse_url(url, options)
    if kind == "sentinel":
        mkw = kw["master_kwargs"]
        hosts = ",".join(f"{h}:{p}" for h, p in kw["hosts"])
        db = int(mkw.get("db", 0))
        where = f"sentinel master {kw['master_name']!r} via {hosts} db {db}"
        sentinel = _SentinelMaster(kw, where)
        client = _resp.Client(_params(mkw, opener=_redis_py_opener(mkw, sentinel.address), address=where))
        return RedisConnection(client, where, db, [client.close, sentinel.close])
    db = int(kw.get("db", 0))
    if "path" in kw:
        where = f"unix://{kw['path']}?db={db}"
    else:
        where = f"{'rediss' if kw.get('ssl') else 'redis'}://{kw['host']}:{kw['port']}/{db}"
    opener = _redis_py_opener(kw, None) if kw.get("ssl") else None
    client = _resp.Client(_params(kw, opener=opener))
    return RedisConnection(client, where, db, [client.close])


def same_server(a: _resp.Client, b: _resp.Client) -> bool:
    """Whether two clients reach the same server and database as the same user."""
    pa, pb = a.params, b.params
    return all(getattr(pa, k) == getattr(pb, k) for k in ("address", "path", "db", "username", "password"))


@contextmanager
def map_errors(what: str, on_connection_error: Callable[[], None] | None = None) -> Iterator[None]:
    """Redis errors become OperationalError naming ``what`` (e.g. "Redis result backend at ...")."""
    try:
        yield
    except _resp.RedisError as exc:
        if on_connection_error is not None and isinstance(exc, _resp.ConnectionError):
            on_connection_error()
        raise OperationalError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # a socket closed under a reader (e.g. close() from another thread)
        if on_connection_error is not None:
            on_connection_error()
        raise OperationalError(f"{what}: connection lost: {exc}") from exc
