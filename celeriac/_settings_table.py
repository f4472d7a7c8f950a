"""The table of Celery 5 settings: new name, old names, default and kind.

This module holds the table and one validator per kind; :mod:`celeriac.config`
does the rest. Each row is
``_s(new_name, default, kind, *old_names, null=...)`` where

* ``kind`` names the validator used at set time (``COERCERS`` below):
  ``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``, ``tuple``,
  ``seconds`` (number or timedelta), ``content`` (serializer names / MIME types),
  ``url`` (string or list of strings), ``symbol`` (import path or object),
  ``ssl`` (bool or mapping), ``rate`` (rate-limit string or number),
  ``tz`` (zone name or tzinfo) and ``any``;
* ``old_names`` are the pre-4.0 uppercase spellings that still resolve;
* ``null`` says whether ``None`` is accepted (by default only when the default
  is ``None``, and always for mappings and ``any``).

Defaults follow Celery 5, except ``broker_url`` and ``result_backend`` whose
``None`` is mapped by the app to the embedded SQLite store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from typing import Any

DEFAULT_PROCESS_LOG_FMT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
DEFAULT_TASK_LOG_FMT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)


@dataclass(frozen=True)
class Setting:
    """One known setting."""

    name: str
    default: Any
    kind: str
    old: tuple[str, ...] = ()
    nullable: bool = True


_ROWS: list[Setting] = []


def _s(name: str, default: Any, kind: str, *old: str, null: bool | None = None) -> None:
    if null is None:
        null = default is None or kind in ("dict", "any")
    _ROWS.append(Setting(name, default, kind, tuple(old), null))


# -- general ------------------------------------------------------------------
_s("accept_content", ["json"], "content", "CELERY_ACCEPT_CONTENT")
_s("result_accept_content", None, "content", "CELERY_RESULT_ACCEPT_CONTENT")
_s("enable_utc", True, "bool", "CELERY_ENABLE_UTC")
_s("imports", (), "tuple", "CELERY_IMPORTS", null=True)
_s("include", (), "tuple", "CELERY_INCLUDE", null=True)
_s("timezone", None, "tz", "CELERY_TIMEZONE")

# -- beat ---------------------------------------------------------------------
_s("beat_max_loop_interval", 0, "float", "CELERYBEAT_MAX_LOOP_INTERVAL", null=True)
_s("beat_schedule", {}, "dict", "CELERYBEAT_SCHEDULE")
_s("beat_scheduler", "celery.beat:PersistentScheduler", "symbol", "CELERYBEAT_SCHEDULER")
_s("beat_schedule_filename", "celerybeat-schedule", "str", "CELERYBEAT_SCHEDULE_FILENAME")
_s("beat_sync_every", 0, "int", "CELERYBEAT_SYNC_EVERY")
_s("beat_cron_starting_deadline", None, "int")
# celeriac's own (not in Celery): see celeriac.beat
_s("beat_lease_seconds", 5.0, "float")        # leader lease; a standby takes over within lease + 1 s
_s("beat_missed_ticks", "once", "str")        # ticks missed while no beat ran: once | skip | all
_s("beat_catchup_seconds", None, "float")     # later than this = missed (default 2 * lease + 1)
for _n in ("logfile", "pidfile", "executable"):
    _s(f"beat_{_n}", None, "str")
    _s(f"worker_{_n}", None, "str")
    _s(f"events_{_n}", None, "str")
for _n in ("uid", "gid", "umask"):
    _s(f"beat_{_n}", None, "any")
    _s(f"worker_{_n}", None, "any")
    _s(f"events_{_n}", None, "any")

# -- broker -------------------------------------------------------------------
_s("broker_url", None, "url", "BROKER_URL")
_s("broker_read_url", None, "url", "BROKER_READ_URL")
_s("broker_write_url", None, "url", "BROKER_WRITE_URL")
_s("broker_transport", None, "symbol", "BROKER_TRANSPORT")
_s("broker_transport_options", {}, "dict", "BROKER_TRANSPORT_OPTIONS")
_s("broker_connection_timeout", 4.0, "float", "BROKER_CONNECTION_TIMEOUT", null=True)
_s("broker_connection_retry", True, "bool", "BROKER_CONNECTION_RETRY")
_s("broker_connection_retry_on_startup", None, "bool")
_s("broker_connection_max_retries", 100, "int", "BROKER_CONNECTION_MAX_RETRIES", null=True)
_s("broker_channel_error_retry", False, "bool")
_s("broker_failover_strategy", None, "symbol", "BROKER_FAILOVER_STRATEGY")
_s("broker_heartbeat", 120.0, "float", "BROKER_HEARTBEAT", null=True)
_s("broker_heartbeat_checkrate", 3.0, "float", "BROKER_HEARTBEAT_CHECKRATE")
_s("broker_login_method", None, "str", "BROKER_LOGIN_METHOD")
_s("broker_native_delayed_delivery_queue_type", "quorum", "str")
_s("broker_pool_limit", 10, "int", "BROKER_POOL_LIMIT", null=True)
_s("broker_use_ssl", False, "ssl", "BROKER_USE_SSL", null=True)

# -- result backends (third-party stores keep their names for compatibility) --
_s("cache_backend", None, "str", "CELERY_CACHE_BACKEND")
_s("cache_backend_options", {}, "dict", "CELERY_CACHE_BACKEND_OPTIONS")
_s("cassandra_entry_ttl", None, "int", "CASSANDRA_ENTRY_TTL")
_s("cassandra_keyspace", None, "str", "CASSANDRA_KEYSPACE")
_s("cassandra_port", None, "int", "CASSANDRA_PORT")
_s("cassandra_read_consistency", None, "str", "CASSANDRA_READ_CONSISTENCY")
_s("cassandra_servers", None, "list", "CASSANDRA_SERVERS")
_s("cassandra_secure_bundle_path", None, "str")
_s("cassandra_table", None, "str", "CASSANDRA_COLUMN_FAMILY")
_s("cassandra_write_consistency", None, "str", "CASSANDRA_WRITE_CONSISTENCY")
_s("cassandra_auth_provider", None, "str")
_s("cassandra_auth_kwargs", None, "dict")
_s("cassandra_options", {}, "dict", "CASSANDRA_OPTIONS")
for _n in ("access_key_id", "secret_access_key", "bucket", "base_path", "endpoint_url", "region"):
    _s(f"s3_{_n}", None, "str", f"S3_{_n.upper()}")
_s("azureblockblob_container_name", "celery", "str")
_s("azureblockblob_retry_initial_backoff_sec", 2, "int")
_s("azureblockblob_retry_increment_base", 2, "int")
_s("azureblockblob_retry_max_attempts", 3, "int")
_s("azureblockblob_base_path", "", "str")
_s("azureblockblob_connection_timeout", 20, "int")
_s("azureblockblob_read_timeout", 120, "int")
_s("gcs_bucket", None, "str")
_s("gcs_project", None, "str")
_s("gcs_base_path", "", "str")
_s("gcs_ttl", 0, "float")
_s("gcs_threadpool_maxsize", 10, "int")
_s("firestore_project", None, "str")
_s("couchbase_backend_settings", None, "dict", "CELERY_COUCHBASE_BACKEND_SETTINGS")
_s("arangodb_backend_settings", None, "dict", "CELERY_ARANGODB_BACKEND_SETTINGS")
_s("mongodb_backend_settings", None, "dict", "CELERY_MONGODB_BACKEND_SETTINGS")
_s("cosmosdbsql_database_name", "celerydb", "str")
_s("cosmosdbsql_collection_name", "celerycol", "str")
_s("cosmosdbsql_consistency_level", "Session", "str")
_s("cosmosdbsql_max_retry_attempts", 9, "int")
_s("cosmosdbsql_max_retry_wait_time", 30, "int")
_s("elasticsearch_retry_on_timeout", None, "bool")
_s("elasticsearch_max_retries", None, "int")
_s("elasticsearch_timeout", None, "float")
_s("elasticsearch_save_meta_as_text", True, "bool")
_s("database_create_tables_at_setup", True, "bool")
_s("database_engine_options", None, "dict", "CELERY_RESULT_ENGINE_OPTIONS")
_s("database_short_lived_sessions", False, "bool", "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS")
_s("database_table_schemas", None, "dict")
_s("database_table_names", None, "dict", "CELERY_RESULT_DB_TABLENAMES")
_s("override_backends", None, "dict")

# -- redis result backend -------------------------------------------------------
_s("redis_backend_use_ssl", None, "ssl", "CELERY_REDIS_BACKEND_USE_SSL")
_s("redis_db", None, "int", "CELERY_REDIS_DB")
_s("redis_host", None, "str", "CELERY_REDIS_HOST")
_s("redis_max_connections", None, "int", "CELERY_REDIS_MAX_CONNECTIONS")
_s("redis_username", None, "str", "CELERY_REDIS_USERNAME")
_s("redis_password", None, "str", "CELERY_REDIS_PASSWORD")
_s("redis_port", None, "int", "CELERY_REDIS_PORT")
_s("redis_socket_timeout", 120.0, "float", "CELERY_REDIS_SOCKET_TIMEOUT", null=True)
_s("redis_socket_connect_timeout", None, "float", "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT")
_s("redis_retry_on_timeout", False, "bool", "CELERY_REDIS_RETRY_ON_TIMEOUT")
_s("redis_socket_keepalive", False, "bool", "CELERY_REDIS_SOCKET_KEEPALIVE")
_s("redis_backend_health_check_interval", 0, "int", "CELERY_REDIS_BACKEND_HEALTH_CHECK_INTERVAL")

# -- results ------------------------------------------------------------------
_s("result_backend", None, "symbol", "CELERY_RESULT_BACKEND")
_s("result_backend_always_retry", False, "bool", "CELERY_RESULT_BACKEND_ALWAYS_RETRY")
_s("result_backend_max_sleep_between_retries_ms", 10000, "int")
_s("result_backend_base_sleep_between_retries_ms", 10, "int")
_s("result_backend_max_retries", float("inf"), "float")
_s("result_backend_thread_safe", False, "bool")
_s("result_backend_transport_options", {}, "dict", "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS")
_s("result_cache_max", -1, "int", "CELERY_MAX_CACHED_RESULTS", null=True)
_s("result_chord_join_timeout", 3.0, "float")
_s("result_chord_retry_interval", 1.0, "float")
_s("result_compression", None, "str", "CELERY_RESULT_COMPRESSION")
_s("result_exchange", "celeryresults", "str", "CELERY_RESULT_EXCHANGE")
_s("result_exchange_type", "direct", "str", "CELERY_RESULT_EXCHANGE_TYPE")
_s("result_expires", timedelta(days=1), "seconds", "CELERY_TASK_RESULT_EXPIRES",
   "CELERY_RESULT_EXPIRES", null=True)
_s("result_persistent", None, "bool", "CELERY_RESULT_PERSISTENT")
_s("result_extended", False, "bool", "CELERY_RESULT_EXTENDED")
_s("result_serializer", "json", "str", "CELERY_RESULT_SERIALIZER")

# -- remote control and events ------------------------------------------------
_s("control_queue_ttl", 300.0, "float", null=True)
_s("control_queue_expires", 10.0, "float", null=True)
_s("control_exchange", "celery", "str")
_s("control_queue_durable", False, "bool")
_s("control_queue_exclusive", False, "bool")
_s("event_queue_expires", 60.0, "float", "CELERY_EVENT_QUEUE_EXPIRES", null=True)
_s("event_queue_ttl", 5.0, "float", "CELERY_EVENT_QUEUE_TTL", null=True)
_s("event_queue_prefix", "celeryev", "str", "CELERY_EVENT_QUEUE_PREFIX")
_s("event_serializer", "json", "str", "CELERY_EVENT_SERIALIZER")
_s("event_exchange", "celeryev", "str", "CELERY_EVENT_EXCHANGE")
_s("event_queue_durable", False, "bool", "CELERY_EVENT_QUEUE_DURABLE")
_s("event_queue_exclusive", False, "bool", "CELERY_EVENT_QUEUE_EXCLUSIVE")

# -- security -----------------------------------------------------------------
for _n in ("certificate", "cert_store", "key", "key_password"):
    _s(f"security_{_n}", None, "str", f"CELERY_SECURITY_{_n.upper()}")
_s("security_digest", "sha256", "str", "CELERY_SECURITY_DIGEST")

# -- tasks --------------------------------------------------------------------
_s("task_acks_late", False, "bool", "CELERY_ACKS_LATE")
_s("task_acks_on_failure_or_timeout", True, "bool", "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT")
_s("task_always_eager", False, "bool", "CELERY_ALWAYS_EAGER")
_s("task_annotations", None, "any", "CELERY_ANNOTATIONS")
_s("task_compression", None, "str", "CELERY_MESSAGE_COMPRESSION", "CELERY_COMPRESSION")
_s("task_create_missing_queues", True, "bool", "CELERY_CREATE_MISSING_QUEUES")
_s("task_create_missing_queue_type", "classic", "str", "CELERY_CREATE_MISSING_QUEUE_TYPE")
_s("task_create_missing_queue_exchange_type", None, "str",
   "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE")
_s("task_inherit_parent_priority", False, "bool", "CELERY_INHERIT_PARENT_PRIORITY")
_s("task_default_delivery_mode", 2, "any", "CELERY_DEFAULT_DELIVERY_MODE")
_s("task_default_queue", "celery", "str", "CELERY_DEFAULT_QUEUE")
_s("task_default_queue_type", "classic", "str", "CELERY_DEFAULT_QUEUE_TYPE")
_s("task_default_exchange", None, "str", "CELERY_DEFAULT_EXCHANGE")
_s("task_default_exchange_type", "direct", "str", "CELERY_DEFAULT_EXCHANGE_TYPE")
_s("task_default_routing_key", None, "str", "CELERY_DEFAULT_ROUTING_KEY")
_s("task_default_rate_limit", None, "rate", "CELERY_DEFAULT_RATE_LIMIT")
_s("task_default_priority", None, "int", "CELERY_DEFAULT_PRIORITY")
_s("task_eager_propagates", False, "bool", "CELERY_EAGER_PROPAGATES_EXCEPTIONS",
   "CELERY_EAGER_PROPAGATES")
_s("task_ignore_result", False, "bool", "CELERY_IGNORE_RESULT")
_s("task_store_eager_result", False, "bool", "CELERY_STORE_EAGER_RESULT")
_s("task_protocol", 2, "int", "CELERY_TASK_PROTOCOL")
_s("task_publish_retry", True, "bool", "CELERY_TASK_PUBLISH_RETRY", "CELERY_PUBLISH_RETRY")
_s("task_publish_retry_policy",
   {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2},
   "dict", "CELERY_TASK_PUBLISH_RETRY_POLICY", "CELERY_PUBLISH_RETRY_POLICY")
_s("task_queues", None, "any", "CELERY_QUEUES")
_s("task_queue_max_priority", None, "int", "CELERY_QUEUE_MAX_PRIORITY")
_s("task_reject_on_worker_lost", None, "bool", "CELERY_REJECT_ON_WORKER_LOST",
   "CELERY_TASK_REJECT_ON_WORKER_LOST")
_s("task_remote_tracebacks", False, "bool", "CELERY_REMOTE_TRACEBACKS")
_s("task_routes", None, "any", "CELERY_ROUTES")
_s("task_send_sent_event", False, "bool", "CELERY_SEND_TASK_SENT_EVENT", "CELERY_SEND_SENT_EVENT")
_s("task_serializer", "json", "str", "CELERY_TASK_SERIALIZER")
_s("task_soft_time_limit", None, "float", "CELERYD_TASK_SOFT_TIME_LIMIT", "CELERYD_SOFT_TIME_LIMIT")
_s("task_time_limit", None, "float", "CELERYD_TASK_TIME_LIMIT", "CELERYD_TIME_LIMIT")
_s("task_store_errors_even_if_ignored", False, "bool", "CELERY_STORE_ERRORS_EVEN_IF_IGNORED")
_s("task_track_started", False, "bool", "CELERY_TRACK_STARTED", "CELERY_TASK_TRACK_STARTED")
_s("task_allow_error_cb_on_chord_header", False, "bool", "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER")

# -- worker -------------------------------------------------------------------
_s("worker_agent", None, "symbol", "CELERYD_AGENT")
_s("worker_autoscaler", "celery.worker.autoscale:Autoscaler", "symbol", "CELERYD_AUTOSCALER")
# celeriac's own: idle seconds before --autoscale shrinks (else env AUTOSCALE_KEEPALIVE, else 30)
_s("worker_autoscale_keepalive", None, "float")
_s("worker_cancel_long_running_tasks_on_connection_loss", False, "bool")
_s("worker_concurrency", None, "int", "CELERYD_CONCURRENCY")
_s("worker_consumer", "celery.worker.consumer:Consumer", "symbol", "CELERYD_CONSUMER")
_s("worker_direct", False, "bool", "CELERY_WORKER_DIRECT")
_s("worker_disable_rate_limits", False, "bool", "CELERY_DISABLE_RATE_LIMITS")
_s("worker_deduplicate_successful_tasks", False, "bool")
_s("worker_enable_remote_control", True, "bool", "CELERY_ENABLE_REMOTE_CONTROL")
_s("worker_hijack_root_logger", True, "bool", "CELERYD_HIJACK_ROOT_LOGGER")
_s("worker_log_color", None, "bool", "CELERYD_LOG_COLOR")
_s("worker_log_format", DEFAULT_PROCESS_LOG_FMT, "str", "CELERYD_LOG_FORMAT", "CELERY_WORKER_LOG_FORMAT")
_s("worker_lost_wait", 10.0, "float", "CELERYD_WORKER_LOST_WAIT")
_s("worker_max_memory_per_child", None, "int", "CELERYD_MAX_MEMORY_PER_CHILD")
_s("worker_max_tasks_per_child", None, "int", "CELERYD_MAX_TASKS_PER_CHILD")
_s("worker_pool", "prefork", "symbol", "CELERYD_POOL")
_s("worker_pool_putlocks", True, "bool", "CELERYD_POOL_PUTLOCKS")
_s("worker_pool_restarts", False, "bool", "CELERYD_POOL_RESTARTS")
_s("worker_proc_alive_timeout", 4.0, "float", "CELERYD_PROC_ALIVE_TIMEOUT")
_s("worker_prefetch_multiplier", 4, "int", "CELERYD_PREFETCH_MULTIPLIER")
_s("worker_enable_prefetch_count_reduction", True, "bool", "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION")
_s("worker_eta_task_limit", None, "int", "CELERYD_ETA_TASK_LIMIT")
_s("worker_disable_prefetch", False, "bool")
_s("worker_redirect_stdouts", True, "bool", "CELERY_REDIRECT_STDOUTS", "CELERYD_REDIRECT_STDOUTS")
_s("worker_redirect_stdouts_level", "WARNING", "str", "CELERY_REDIRECT_STDOUTS_LEVEL",
   "CELERYD_REDIRECT_STDOUTS_LEVEL")
_s("worker_send_task_events", False, "bool", "CELERY_SEND_EVENTS")
_s("worker_state_db", None, "str", "CELERYD_STATE_DB")
_s("worker_task_log_format", DEFAULT_TASK_LOG_FMT, "str", "CELERYD_TASK_LOG_FORMAT",
   "CELERY_WORKER_TASK_LOG_FORMAT")
_s("worker_timer", None, "symbol", "CELERYD_TIMER")
_s("worker_timer_precision", 1.0, "float", "CELERYD_TIMER_PRECISION")
_s("worker_detect_quorum_queues", True, "bool", "CELERYD_DETECT_QUORUM_QUEUES")
_s("worker_soft_shutdown_timeout", 0.0, "float")
_s("worker_enable_soft_shutdown_on_idle", False, "bool")


# -- validators, one per kind ---------------------------------------------------
class InvalidValue(Exception):
    """A value does not fit a kind; ``args[0]`` says what was expected."""


_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise InvalidValue("a boolean (true/false, 1/0, yes/no)")


def _to_int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            try:
                f = float(v.strip())
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
    raise InvalidValue("an integer")


def _to_float(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise InvalidValue("a number")


def _to_seconds(v: Any) -> Any:
    if isinstance(v, timedelta):
        return v
    try:
        return _to_float(v)
    except InvalidValue:
        raise InvalidValue("a number of seconds or a timedelta") from None


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise InvalidValue("a string")


def _to_symbol(v: Any) -> Any:
    if isinstance(v, str) or callable(v):
        return v
    raise InvalidValue("an import path string or a class")


def _to_url(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(u, str) for u in v):
        return list(v)
    raise InvalidValue("a URL string or a list of URL strings")


def _to_tz(v: Any) -> Any:
    if isinstance(v, (str, tzinfo)):
        return v
    raise InvalidValue("a time zone name or a tzinfo")


def _to_dict(v: Any) -> Any:
    if isinstance(v, Mapping):
        return v
    if isinstance(v, str):
        try:
            parsed = json.loads(v)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise InvalidValue("a mapping (dict)")


def _split(v: Any) -> list[Any]:
    if isinstance(v, str):
        if v.strip().startswith("["):
            try:
                parsed = json.loads(v)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return parsed
        return [part.strip() for part in v.split(",") if part.strip()]
    if isinstance(v, (list, tuple, set, frozenset)):
        return list(v)
    raise InvalidValue("a list")


def _to_tuple(v: Any) -> tuple[Any, ...]:
    try:
        return tuple(_split(v))
    except InvalidValue:
        raise InvalidValue("a list or tuple") from None


def _to_content(v: Any) -> list[str]:
    try:
        items = _split(v)
    except InvalidValue:
        items = [None]
    if not all(isinstance(i, str) and i for i in items):
        raise InvalidValue("a list of serializer names or MIME types")
    return items


def _to_ssl(v: Any) -> Any:
    if isinstance(v, Mapping):
        return v
    if isinstance(v, str) and v.strip().startswith("{"):
        return _to_dict(v)
    try:
        return _to_bool(v)
    except InvalidValue:
        raise InvalidValue("a boolean or a mapping of SSL options") from None


def _to_rate(v: Any) -> Any:
    if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise InvalidValue("a rate limit such as '10/m', or a number per second")


COERCERS: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool, "int": _to_int, "float": _to_float, "seconds": _to_seconds,
    "str": _to_str, "symbol": _to_symbol, "url": _to_url, "tz": _to_tz, "dict": _to_dict,
    "list": _split, "tuple": _to_tuple, "content": _to_content, "ssl": _to_ssl,
    "rate": _to_rate, "any": lambda v: v,
}



def _index(rows: list[Setting]) -> tuple[dict[str, Setting], dict[str, str]]:
    settings: dict[str, Setting] = {}
    old_names: dict[str, str] = {}
    for row in rows:
        if row.name in settings:
            raise RuntimeError(f"setting {row.name!r} is listed twice")
        settings[row.name] = row
        for old in row.old:
            if old_names.get(old, row.name) != row.name:
                raise RuntimeError(f"old name {old!r} maps to two settings")
            old_names[old] = row.name
    return settings, old_names


#: new lowercase name -> :class:`Setting`; OLD_NAMES: old uppercase name -> new name
SETTINGS, OLD_NAMES = _index(_ROWS)
#: new lowercase name -> Celery 5 default (never mutate; Config copies it)
DEFAULTS: dict[str, Any] = {name: s.default for name, s in SETTINGS.items()}

del _n
