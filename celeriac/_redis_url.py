"""Redis URLs as Celery and kombu accept them, turned into redis-py clients.

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
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

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

    client: redis.Redis
    where: str
    db: int = 0
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


def _cert_reqs(value: Any) -> Any:
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
        "retry": Retry(NoBackoff(), 0),
    }
    for name in _PARAMS:
        if options.get(name) is not None:
            kw[name] = _typed(name, options[name], url)
    return kw


def parse_url(url: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``("pool", ConnectionPool kwargs)`` or ``("sentinel", {...})`` for a Redis URL."""
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
        kw.update(path=path, connection_class=UnixDomainSocketConnection)
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
        kw["connection_class"] = SSLConnection
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


def connect(url: str, options: dict[str, Any] | None = None) -> RedisConnection:
    """A client for ``url``; connections open lazily, on first use."""
    kind, kw = parse_url(url, options)
    if kind == "sentinel":
        from redis.sentinel import Sentinel

        mkw = kw["master_kwargs"]
        sentinel = Sentinel(kw["hosts"], sentinel_kwargs={
            "socket_timeout": mkw["socket_timeout"],
            "socket_connect_timeout": mkw["socket_connect_timeout"], **kw["sentinel_kwargs"]})
        client = sentinel.master_for(kw["master_name"], **mkw)
        db = int(mkw.get("db", 0))
        hosts = ",".join(f"{h}:{p}" for h, p in kw["hosts"])
        return RedisConnection(client, f"sentinel master {kw['master_name']!r} via {hosts} db {db}", db,
                               [client.connection_pool.disconnect, sentinel.close])
    pool = ConnectionPool(**kw)
    db = int(kw.get("db", 0))
    if "path" in kw:
        where = f"unix://{kw['path']}?db={db}"
    else:
        scheme = "rediss" if kw.get("connection_class") is SSLConnection else "redis"
        where = f"{scheme}://{kw['host']}:{kw['port']}/{db}"
    return RedisConnection(redis.Redis(connection_pool=pool), where, db, [pool.disconnect])


@contextmanager
def map_errors(what: str, on_connection_error: Callable[[], None] | None = None) -> Iterator[None]:
    """redis-py errors become OperationalError naming ``what`` (e.g. "Redis result backend at ...")."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        if on_connection_error is not None and isinstance(
                exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            on_connection_error()
        raise OperationalError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # a socket closed under a reader (e.g. close() from another thread)
        if on_connection_error is not None:
            on_connection_error()
        raise OperationalError(f"{what}: connection lost: {exc}") from exc
