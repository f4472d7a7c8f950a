"""Redis broker URLs and connections.

Accepted URL forms (as Celery/kombu accept them)::

    redis://[user:password@]host[:port][/db][?socket_timeout=…]
    rediss://[user:password@]host[:port][/db][?ssl_cert_reqs=required]   TLS
    unix:///path/to/redis.sock[?db=N]            (also redis+socket:///path…)
    sentinel://[:password@]host:26379;sentinel://host2:26379/0          + master_name

Transport options read here (Celery's ``broker_transport_options``):
``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``,
``max_connections``, ``health_check_interval``, ``master_name`` and
``sentinel_kwargs`` (Sentinel), and ``ssl`` — Celery's ``broker_use_ssl`` dict
(``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, with or
without the ``ssl_`` prefix).  Giving ``ssl`` with a ``redis://`` URL turns TLS
on, as kombu does.

Connections never retry on their own (redis-py 8 defaults to 10 retries with
back-off, which would hide an outage for seconds and could repeat a
non-idempotent command); the pool reconnects a stale connection when it is
handed out, so the broker works again as soon as the server is back.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

from ..exceptions import ImproperlyConfigured, OperationalError

DEFAULT_SOCKET_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0

_QUERY_TYPES: dict[str, Callable[[str], Any]] = {
    "db": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "max_connections": int,
    "health_check_interval": int,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": lambda v: v.lower() in ("1", "true", "yes", "on"),
}
_OPTION_NAMES = ("socket_timeout", "socket_connect_timeout", "socket_keepalive",
                 "max_connections", "health_check_interval")
_SSL_NAMES = ("cert_reqs", "ca_certs", "certfile", "keyfile", "check_hostname", "ca_path", "ca_data")


@dataclass
class RedisConnection:
    """A client plus what is needed to name it in errors and to close it."""

    client: redis.Redis
    where: str                      # e.g. "redis://127.0.0.1:6379/0" (never the password)
    db: int = 0
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


def _cert_reqs(value: Any) -> Any:
    """Accept ssl.CERT_* values and the strings Celery users write."""
    if isinstance(value, int) or value is None:
        return value if value is not None else "required"
    text = str(value).strip().lower()
    text = text.removeprefix("ssl.").removeprefix("cert_")
    if text not in ("none", "optional", "required"):
        raise ImproperlyConfigured(f"ssl_cert_reqs must be required, optional or none, not {value!r}")
    return {"none": _ssl.CERT_NONE, "optional": _ssl.CERT_OPTIONAL, "required": _ssl.CERT_REQUIRED}[text]


def ssl_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """redis-py SSL keyword arguments from ``broker_use_ssl``-style options."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = key.removeprefix("ssl_")
        if name not in _SSL_NAMES:
            raise ImproperlyConfigured(f"Unknown Redis TLS option {key!r} (known: ssl_{', ssl_'.join(_SSL_NAMES)})")
        out["ssl_" + name] = _cert_reqs(value) if name == "cert_reqs" else value
    return out


def _query(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        conv = _QUERY_TYPES.get(name)
        if conv is None:
            raise ImproperlyConfigured(f"Unknown Redis URL parameter {name!r}")
        try:
            out[name] = conv(values[-1])
        except ValueError as exc:
            raise ImproperlyConfigured(f"Bad value for {name!r} in the Redis URL: {values[-1]!r}") from exc
    return out


def _common_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    for name in _OPTION_NAMES:
        if options.get(name) is not None:
            kw[name] = options[name]
    return kw


def parse_url(url: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, keyword arguments) for a broker URL; kind is "pool" or "sentinel"."""
    options = dict(options or {})
    scheme = url.split("://", 1)[0].lower()
    tls = dict(options.get("ssl") or options.get("broker_use_ssl") or {})
    if scheme == "sentinel":
        return "sentinel", _parse_sentinel(url, options, tls)
    kw = _common_kwargs(options)
    if scheme in ("unix", "redis+socket"):
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]     # unix://[:password@]/path or a relative path
        path = unquote(host + parts.path)
        if not path:
            raise ImproperlyConfigured(f"Redis socket URL {url!r} has no path")
        kw.update(path=path, connection_class=UnixDomainSocketConnection)
        if parts.password:
            kw["password"] = unquote(parts.password)
        kw.update(_query(parts.query))
        return "pool", kw
    if scheme not in ("redis", "rediss"):
        raise ImproperlyConfigured(f"Not a Redis URL: {url!r}")
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ImproperlyConfigured(f"Bad port in Redis URL {url!r}") from exc
    kw.update(host=parts.hostname or "localhost", port=port)
    if parts.username:
        kw["username"] = unquote(parts.username)
    if parts.password:
        kw["password"] = unquote(parts.password)
    path = parts.path.strip("/")
    if path:
        try:
            kw["db"] = int(path)
        except ValueError as exc:
            raise ImproperlyConfigured(f"Redis URL {url!r}: the path must be a database number") from exc
    query = _query(parts.query)
    tls.update({k: query.pop(k) for k in list(query) if k.startswith("ssl_")})
    kw.update(query)
    if scheme == "rediss" or tls:
        kw["connection_class"] = SSLConnection
        kw.update(ssl_kwargs(tls))
    return "pool", kw


def _parse_sentinel(url: str, options: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    master = options.get("master_name")
    if not master:
        raise ImproperlyConfigured("A sentinel:// broker URL needs broker_transport_options['master_name']")
    hosts: list[tuple[str, int]] = []
    master_kw = _common_kwargs(options)
    for part in filter(None, (p.strip() for p in url.split(";"))):
        if not part.lower().startswith("sentinel://"):
            raise ImproperlyConfigured(f"Bad sentinel URL part {part!r} in {url!r}")
        parts = urlsplit(part)
        try:
            hosts.append((parts.hostname or "localhost", parts.port or 26379))
        except ValueError as exc:
            raise ImproperlyConfigured(f"Bad port in sentinel URL {part!r}") from exc
        if parts.username:
            master_kw["username"] = unquote(parts.username)
        if parts.password:
            master_kw["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            try:
                master_kw["db"] = int(parts.path.strip("/"))
            except ValueError as exc:
                raise ImproperlyConfigured(f"Bad database number in {part!r}") from exc
        master_kw.update(_query(parts.query))
    if tls:
        master_kw["ssl"] = True
        master_kw.update(ssl_kwargs(tls))
    sentinel_kw = dict(options.get("sentinel_kwargs") or {})
    return {"hosts": hosts, "master_name": master, "master_kwargs": master_kw, "sentinel_kwargs": sentinel_kw}


def connect(url: str, options: dict[str, Any] | None = None) -> RedisConnection:
    """Build a client for the URL (connections open lazily, on first use)."""
    kind, kw = parse_url(url, options)
    if kind == "sentinel":
        from redis.sentinel import Sentinel

        sentinel_kw = {"socket_timeout": kw["master_kwargs"]["socket_timeout"],
                       "socket_connect_timeout": kw["master_kwargs"]["socket_connect_timeout"],
                       **kw["sentinel_kwargs"]}
        sentinel = Sentinel(kw["hosts"], sentinel_kwargs=sentinel_kw)
        client = sentinel.master_for(kw["master_name"], **kw["master_kwargs"])
        hosts = ",".join(f"{h}:{p}" for h, p in kw["hosts"])
        db = int(kw["master_kwargs"].get("db", 0))
        where = f"sentinel master {kw['master_name']!r} via {hosts}, db {db}"
        return RedisConnection(client, where, db, [client.connection_pool.disconnect, sentinel.close])
    pool = ConnectionPool(**kw)
    db = int(kw.get("db", 0))
    if "path" in kw:
        where = f"unix://{kw['path']}?db={db}"
    else:
        scheme = "rediss" if kw.get("connection_class") is SSLConnection else "redis"
        where = f"{scheme}://{kw['host']}:{kw['port']}/{db}"
    return RedisConnection(redis.Redis(connection_pool=pool), where, db, [pool.disconnect])


@contextmanager
def map_errors(where: str, on_connection_error: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn redis-py errors into OperationalError naming the server."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        if on_connection_error is not None and isinstance(
                exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            on_connection_error()
        kind = type(exc).__name__
        raise OperationalError(f"Redis broker at {where}: {kind}: {exc}") from exc
