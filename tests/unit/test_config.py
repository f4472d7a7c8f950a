"""celeriac.config: names, defaults, sources, layers, validation, warnings."""

from __future__ import annotations

import pickle
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from celeriac.config import (
    DEFAULTS,
    LAYERS,
    OLD_NAMES,
    SETTINGS,
    Config,
    canonical_name,
    coerce_setting,
    looks_like_setting,
)
from celeriac.exceptions import ImproperlyConfigured

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a uniquely named module to tmp_path (on sys.path); return its import name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------------- names


def test_every_setting_resolves_under_every_spelling() -> None:
    for name in SETTINGS:
        assert canonical_name(name) == name
        assert canonical_name("CELERY_" + name.upper()) == name
        assert canonical_name("CELERY_" + name.upper(), namespace="CELERY") == name
        assert canonical_name("celery_" + name, namespace="celery") == name
    for old, new in OLD_NAMES.items():
        assert new in SETTINGS
        assert canonical_name(old) == new


@pytest.mark.parametrize(("old", "new"), [
    ("BROKER_URL", "broker_url"),
    ("CELERY_RESULT_BACKEND", "result_backend"),
    ("CELERY_TASK_SERIALIZER", "task_serializer"),
    ("CELERYD_CONCURRENCY", "worker_concurrency"),
    ("CELERYD_PREFETCH_MULTIPLIER", "worker_prefetch_multiplier"),
    ("CELERYBEAT_SCHEDULE", "beat_schedule"),
    ("CELERY_ALWAYS_EAGER", "task_always_eager"),
    ("CELERY_EAGER_PROPAGATES_EXCEPTIONS", "task_eager_propagates"),
    ("CELERY_IGNORE_RESULT", "task_ignore_result"),
    ("CELERY_TASK_RESULT_EXPIRES", "result_expires"),
    ("CELERY_REDIS_SOCKET_TIMEOUT", "redis_socket_timeout"),
    ("CELERY_SEND_EVENTS", "worker_send_task_events"),
    ("CELERYD_TASK_TIME_LIMIT", "task_time_limit"),
    ("CELERY_ACCEPT_CONTENT", "accept_content"),
    ("CELERY_ROUTES", "task_routes"),
])
def test_old_names(old: str, new: str) -> None:
    assert canonical_name(old) == new
    conf = Config()
    conf[old] = DEFAULTS[new]
    assert conf.source_of(new) == "user"


@pytest.mark.parametrize(("key", "new"), [
    ("CELERY_BROKER_URL", "broker_url"),
    ("CELERY_TASK_ALWAYS_EAGER", "task_always_eager"),
    ("CELERY_RESULT_EXTENDED", "result_extended"),
    ("CELERY_BEAT_SCHEDULER", "beat_scheduler"),
    ("CELERY_TIMEZONE", "timezone"),
    ("CELERY_REDIS_SOCKET_TIMEOUT", "redis_socket_timeout"),
    ("CELERY_EAGER_PROPAGATES_EXCEPTIONS", "task_eager_propagates"),
    ("CELERY_TASK_RESULT_EXPIRES", "result_expires"),
    ("CELERY_CELERYD_CONCURRENCY", "worker_concurrency"),
])
def test_namespace_names(key: str, new: str) -> None:
    assert canonical_name(key, namespace="CELERY") == new


def test_namespace_requires_prefix_and_unknown_is_none() -> None:
    assert canonical_name("BROKER_URL", namespace="CELERY") is None
    assert canonical_name("DEBUG", namespace="CELERY") is None
    assert canonical_name("CELERY_NOT_A_SETTING", namespace="CELERY") is None
    assert canonical_name("not_a_setting") is None
    assert canonical_name("broker_url_x") is None


def test_all_spellings_read_and_write_the_same_value() -> None:
    conf = Config()
    conf.broker_url = "redis://a"
    assert conf.broker_url == conf["broker_url"] == conf.BROKER_URL == conf["CELERY_BROKER_URL"] == "redis://a"
    conf["BROKER_URL"] = "redis://b"
    assert conf.broker_url == "redis://b"
    conf.CELERY_BROKER_URL = "redis://c"
    assert conf.get("broker_url") == "redis://c"
    assert "broker_url" not in [k for k in conf.keys() if k != "broker_url"]
    assert "BROKER_URL" not in conf.keys()
    assert conf.CELERYD_CONCURRENCY is None
    conf.update(CELERYD_CONCURRENCY=3)
    assert conf.worker_concurrency == conf["CELERY_WORKER_CONCURRENCY"] == 3


def test_old_name_table_has_no_conflicts() -> None:
    assert all(canonical_name(old) == new for old, new in OLD_NAMES.items())
    assert all(name == name.lower() for name in SETTINGS)
    assert all(old == old.upper() for old in OLD_NAMES)


# --------------------------------------------------------------------------- defaults


def test_defaults_match_celery() -> None:
    conf = Config()
    assert conf.task_default_queue == "celery"
    assert conf.result_expires == timedelta(days=1)
    assert conf.get_seconds("result_expires") == 86400.0
    assert conf.worker_prefetch_multiplier == 4
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.timezone is None
    assert conf.enable_utc is True
    assert conf.worker_concurrency is None
    assert conf.task_acks_late is False
    assert conf.task_acks_on_failure_or_timeout is True
    assert conf.broker_connection_retry_on_startup is None
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_max_retries == 100
    assert conf.broker_connection_timeout == 4.0
    assert conf.broker_heartbeat == 120.0
    assert conf.broker_pool_limit == 10
    assert conf.broker_transport_options == {}
    assert conf.broker_url is None
    assert conf.result_backend is None
    assert conf.task_protocol == 2
    assert conf.task_create_missing_queues is True
    assert conf.task_publish_retry is True
    assert conf.task_publish_retry_policy["max_retries"] == 3
    assert conf.worker_pool == "prefork"
    assert conf.worker_hijack_root_logger is True
    assert conf.worker_redirect_stdouts_level == "WARNING"
    assert conf.worker_lost_wait == 10.0
    assert conf.worker_proc_alive_timeout == 4.0
    assert conf.worker_enable_remote_control is True
    assert conf.beat_scheduler == "celery.beat:PersistentScheduler"
    assert conf.beat_schedule_filename == "celerybeat-schedule"
    assert conf.beat_schedule == {}
    assert conf.control_queue_ttl == 300.0
    assert conf.control_queue_expires == 10.0
    assert conf.control_exchange == "celery"
    assert conf.event_exchange == "celeryev"
    assert conf.event_serializer == "json"
    assert conf.redis_socket_timeout == 120.0
    assert conf.result_extended is False
    assert conf.imports == () and conf.include == ()
    assert conf.changes == {}


def test_mutable_defaults_are_per_instance() -> None:
    a, b = Config(), Config()
    a.beat_schedule["x"] = {"task": "t", "schedule": 5}
    assert b.beat_schedule == {}
    assert DEFAULTS["beat_schedule"] == {}
    assert a.changes == {"beat_schedule": {"x": {"task": "t", "schedule": 5}}}


# --------------------------------------------------------------------------- mapping API


def test_mapping_api() -> None:
    conf = Config()
    assert "task_serializer" in conf and "CELERY_TASK_SERIALIZER" in conf
    assert "nope" not in conf
    assert conf.get("nope", 7) == 7
    with pytest.raises(KeyError):
        conf["nope"]
    with pytest.raises(AttributeError):
        conf.nope  # noqa: B018
    conf.my_custom_value = 12
    assert conf["my_custom_value"] == 12 and "my_custom_value" in conf.keys()
    assert len(conf) == len(SETTINGS) + 1
    assert dict(conf.items())["task_serializer"] == "json"
    assert set(conf) == set(conf.keys())
    snapshot = conf.copy()
    assert type(snapshot) is dict and snapshot["my_custom_value"] == 12
    conf.update({"task_serializer": "pickle"}, worker_concurrency="2")
    conf.update([("task_track_started", "yes")])
    assert (conf.task_serializer, conf.worker_concurrency, conf.task_track_started) == ("pickle", 2, True)
    assert snapshot["task_serializer"] == "json"
    assert conf.first("result_backend", "broker_url", "task_serializer") == "pickle"
    assert conf.find_value_for_key("serializer", "task") == "pickle"
    assert "task_serializer" in dir(conf)


def test_delete_returns_to_lower_layer() -> None:
    conf = Config(explicit={"broker_url": "redis://explicit"})
    conf.broker_url = "redis://user"
    del conf["BROKER_URL"]
    assert conf.broker_url == "redis://explicit"
    with pytest.raises(KeyError):
        del conf["broker_url"]
    conf.task_serializer = "pickle"
    del conf.task_serializer
    assert conf.task_serializer == "json"


def test_setdefault_only_fills_unconfigured_settings() -> None:
    conf = Config()
    conf.from_object({"task_default_queue": "fromobj"})
    assert conf.setdefault("task_default_queue", "other") == "fromobj"
    assert conf.setdefault("task_default_priority", 5) == 5
    assert conf.source_of("task_default_priority") == "fallback"
    assert conf.setdefault("task_default_priority", 9) == 5
    # a fallback value sits below every source
    conf.from_object({"task_default_priority": 1})
    assert conf.task_default_priority == 1
    assert conf.setdefault("my_thing", "x") == "x"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("name", "value"), [
    ("worker_prefetch_multiplier", "abc"),
    ("worker_prefetch_multiplier", 2.5),
    ("worker_prefetch_multiplier", True),
    ("worker_prefetch_multiplier", None),
    ("task_acks_late", "maybe"),
    ("task_acks_late", 2),
    ("broker_connection_timeout", "soon"),
    ("task_serializer", 5),
    ("broker_transport_options", [1, 2]),
    ("accept_content", 5),
    ("accept_content", ["json", 3]),
    ("result_expires", "tomorrow"),
    ("broker_url", 5),
    ("timezone", 3),
])
def test_bad_values_raise_naming_setting_and_value(name: str, value: object) -> None:
    conf = Config()
    with pytest.raises(ImproperlyConfigured) as info:
        setattr(conf, name, value)
    assert repr(name) in str(info.value)
    if value is not None:
        assert repr(value) in str(info.value)
    assert conf.source_of(name) == "default"


def test_bad_value_through_old_name_names_new_setting() -> None:
    conf = Config()
    with pytest.raises(ImproperlyConfigured, match="worker_prefetch_multiplier.*'abc'"):
        conf.update(CELERYD_PREFETCH_MULTIPLIER="abc")


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("False", False), ("1", True), ("0", False), ("yes", True),
    ("NO", False), (" on ", True), ("off", False), (1, True), (0, False), (True, True),
])
def test_bool_coercion(raw: object, expected: bool) -> None:
    conf = Config()
    conf.task_always_eager = raw
    assert conf.task_always_eager is expected


def test_numeric_coercion() -> None:
    conf = Config()
    conf.worker_concurrency = "8"
    conf.worker_prefetch_multiplier = " 2 "
    conf.worker_max_tasks_per_child = 100.0
    conf.broker_connection_timeout = "2.5"
    conf.task_time_limit = 30
    assert conf.worker_concurrency == 8 and type(conf.worker_concurrency) is int
    assert conf.worker_prefetch_multiplier == 2
    assert conf.worker_max_tasks_per_child == 100 and type(conf.worker_max_tasks_per_child) is int
    assert conf.broker_connection_timeout == 2.5
    assert conf.task_time_limit == 30
    assert coerce_setting("CELERYD_CONCURRENCY", "3") == 3


def test_accept_content_forms() -> None:
    conf = Config()
    conf.accept_content = ("json", "application/x-python-serialize")
    assert conf.accept_content == ["json", "application/x-python-serialize"]
    conf.accept_content = {"msgpack"}
    assert conf.accept_content == ["msgpack"]
    conf.accept_content = "json, pickle"
    assert conf.accept_content == ["json", "pickle"]
    conf.accept_content = '["yaml"]'
    assert conf.accept_content == ["yaml"]
    with pytest.raises(ImproperlyConfigured):
        conf.accept_content = None


def test_result_expires_forms() -> None:
    conf = Config()
    conf.result_expires = 3600
    assert conf.get_seconds("result_expires") == 3600.0
    conf.result_expires = timedelta(minutes=2)
    assert conf.result_expires == timedelta(minutes=2)
    assert conf.get_seconds("CELERY_TASK_RESULT_EXPIRES") == 120.0
    conf.result_expires = "1.5"
    assert conf.get_seconds("result_expires") == 1.5
    conf.result_expires = None
    assert conf.get_seconds("result_expires") is None
    conf.result_expires = 86400  # same as the default once converted
    assert "result_expires" not in conf.changes


def test_other_kinds() -> None:
    conf = Config()
    conf.broker_transport_options = '{"visibility_timeout": 10}'
    assert conf.broker_transport_options == {"visibility_timeout": 10}
    conf.broker_use_ssl = {"cert_reqs": 0}
    assert conf.broker_use_ssl == {"cert_reqs": 0}
    conf.broker_use_ssl = "true"
    assert conf.broker_use_ssl is True
    conf.broker_url = ["redis://a", "redis://b"]
    assert conf.broker_url == ["redis://a", "redis://b"]
    conf.timezone = timezone.utc
    assert conf.timezone is timezone.utc
    conf.imports = ["a.tasks", "b.tasks"]
    assert conf.imports == ("a.tasks", "b.tasks")
    conf.include = "c.tasks,d.tasks"
    assert conf.include == ("c.tasks", "d.tasks")
    conf.task_default_rate_limit = "10/m"
    conf.task_routes = {"a.*": {"queue": "a"}}
    conf.worker_pool = Config  # classes are accepted where Celery takes an import path
    assert conf.worker_pool is Config


# --------------------------------------------------------------------------- warnings


def test_unknown_setting_warns_with_suggestion() -> None:
    conf = Config()
    with pytest.warns(UserWarning, match=r"Unknown setting 'task_acks_lat' \(did you mean 'task_acks_late'\?\)"):
        conf.task_acks_lat = True
    assert conf.task_acks_lat is True  # kept anyway
    with pytest.warns(UserWarning, match=r"'CELERYD_PREFETCH_MULTIPLER' \(did you mean 'CELERYD_PREFETCH_MULTIPLIER'\?\)"):
        conf.update(CELERYD_PREFETCH_MULTIPLER=1)
    with pytest.warns(UserWarning, match=r"Unknown setting 'broker_zzzzzzzzzzzz'$"):
        conf["broker_zzzzzzzzzzzz"] = 1


def test_warning_points_at_caller() -> None:
    conf = Config()
    with pytest.warns(UserWarning) as record:
        conf.worker_concurrancy = 2
    assert record[0].filename == __file__


def test_non_setting_keys_do_not_warn() -> None:
    conf = Config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conf.my_app_setting = 1
        conf.update({"SOME_FLAG": True, 3: "x"})
    assert conf[3] == "x"


def test_looks_like_setting() -> None:
    assert looks_like_setting("task_foo") and looks_like_setting("redis_foo")
    assert looks_like_setting("CELERYD_FOO") and looks_like_setting("BROKER_FOO")
    assert looks_like_setting("CELERYBEAT_FOO")
    assert not looks_like_setting("my_setting") and not looks_like_setting("DEBUG")


# --------------------------------------------------------------------------- sources


def test_from_module_with_namespace(make_module: Callable[[str, str], str]) -> None:
    name = make_module("djsettings", """
        from datetime import timedelta
        DEBUG = True
        INSTALLED_APPS = ["x"]
        SECRET_KEY = "s"
        BROKER_URL = "ignored://without-prefix"
        CELERY_BROKER_URL = "redis://ns/0"
        CELERY_TASK_ALWAYS_EAGER = "true"
        CELERY_EAGER_PROPAGATES_EXCEPTIONS = True
        CELERY_RESULT_EXTENDED = True
        CELERY_BEAT_SCHEDULER = "my.sched:Scheduler"
        CELERY_TIMEZONE = "Europe/Paris"
        CELERY_REDIS_SOCKET_TIMEOUT = "5"
        CELERY_TASK_RESULT_EXPIRES = timedelta(hours=1)
        CELERY_MY_PROJECT_FLAG = 1
    """)
    module = __import__(name)
    conf = Config()
    conf.from_object(module, namespace="CELERY")
    assert conf.broker_url == "redis://ns/0"
    assert conf.task_always_eager is True
    assert conf.task_eager_propagates is True
    assert conf.result_extended is True
    assert conf.beat_scheduler == "my.sched:Scheduler"
    assert conf.timezone == "Europe/Paris"
    assert conf.redis_socket_timeout == 5.0
    assert conf.get_seconds("result_expires") == 3600.0
    assert conf.my_project_flag == 1
    for key in ("DEBUG", "INSTALLED_APPS", "SECRET_KEY", "debug", "timedelta"):
        assert key not in conf
    assert conf.source_of("broker_url") == "object"


def test_namespaced_unknown_setting_warns(make_module: Callable[[str, str], str]) -> None:
    name = make_module("djtypo", "CELERY_TASK_ACKS_LAT = True\n")
    conf = Config()
    with pytest.warns(UserWarning, match=r"'CELERY_TASK_ACKS_LAT' \(did you mean 'CELERY_TASK_ACKS_LATE'\?\)"):
        conf.from_object(__import__(name), namespace="CELERY")
    assert conf.task_acks_lat is True


def test_from_module_without_namespace(make_module: Callable[[str, str], str]) -> None:
    name = make_module("celeryconfig", """
        import os
        from datetime import timedelta
        DEBUG = True
        ALLOWED_HOSTS = []
        BROKER_URL = "redis://old/1"
        task_serializer = "pickle"
        CELERYD_CONCURRENCY = "3"
        CELERY_ACCEPT_CONTENT = ["json", "pickle"]
        my_helper_value = 42
        def helper():
            return 1
    """)
    conf = Config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conf.from_object(__import__(name))
    assert conf.broker_url == "redis://old/1"
    assert conf.task_serializer == "pickle"
    assert conf.worker_concurrency == 3
    assert conf.accept_content == ["json", "pickle"]
    assert conf.my_helper_value == 42
    for key in ("DEBUG", "ALLOWED_HOSTS", "os", "timedelta", "helper"):
        assert key not in conf


def test_new_name_wins_over_old_name_in_same_source() -> None:
    conf = Config()
    conf.from_object({"broker_url": "new://", "BROKER_URL": "old://"})
    assert conf.broker_url == "new://"
    conf.from_object({"BROKER_URL": "old://", "broker_url": "new://"})
    assert conf.broker_url == "new://"


def test_from_class_and_instance_and_dict() -> None:
    class CeleryConfig:
        broker_url = "redis://class"
        CELERYD_PREFETCH_MULTIPLIER = 1
        NOT_CELERY = "ignored"

        def method(self) -> int:
            return 1

        @property
        def prop(self) -> int:
            return 2

    conf = Config()
    conf.from_object(CeleryConfig)
    assert conf.broker_url == "redis://class" and conf.worker_prefetch_multiplier == 1
    assert "NOT_CELERY" not in conf and "method" not in conf and "prop" not in conf

    instance = CeleryConfig()
    instance.broker_url = "redis://instance"
    conf.from_object(instance)
    assert conf.broker_url == "redis://instance"

    conf.from_object({"task_default_queue": "dq", "CELERY_FOO_BAR": 1}, namespace="CELERY")
    assert conf.task_default_queue == "celery"  # not prefixed: not taken
    assert conf.foo_bar == 1
    assert conf.broker_url is None  # from_object replaces the previous object
    conf.from_object({"task_default_queue": "dq"})
    assert conf.task_default_queue == "dq"


def test_from_object_bad_value_names_setting() -> None:
    conf = Config()
    with pytest.raises(ImproperlyConfigured, match=r"'worker_prefetch_multiplier' \(from config mapping\): 'lots'"):
        conf.from_object({"worker_prefetch_multiplier": "lots"})


def test_lazy_string_source(make_module: Callable[[str, str], str]) -> None:
    log_name = make_module("probe", "EVENTS = []\n")
    probe = __import__(log_name)
    cfg_name = make_module("lazyconf", f"""
        from {log_name} import EVENTS
        EVENTS.append("imported")

        class _Settings:
            DEBUG = True
            CELERY_BROKER_URL = "redis://lazy/0"
            CELERY_TASK_SERIALIZER = "pickle"
            CELERY_WORKER_CONCURRENCY = 7

        settings = _Settings()
    """)
    conf = Config()
    conf.from_object(f"{cfg_name}:settings", namespace="CELERY")
    conf.task_serializer = "json"  # writes do not load the source
    conf.update(worker_concurrency=2)
    assert probe.EVENTS == []
    assert cfg_name not in sys.modules
    assert "lazy source" in repr(conf)

    assert conf.broker_url == "redis://lazy/0"  # first read imports
    assert probe.EVENTS == ["imported"]
    assert conf.task_serializer == "json"  # earlier user writes still win
    assert conf.worker_concurrency == 2
    assert conf.source_of("broker_url") == "object"
    conf.broker_url = "redis://user"
    assert conf.broker_url == "redis://user"
    assert conf.task_default_queue == "celery"
    assert probe.EVENTS == ["imported"]  # imported once


def test_lazy_source_may_read_conf_while_importing(make_module: Callable[[str, str], str]) -> None:
    probe_name = make_module("holder", "CONF = None\nSEEN = []\n")
    probe = __import__(probe_name)
    cfg_name = make_module("reentrant", f"""
        import {probe_name} as holder
        holder.SEEN.append(holder.CONF.task_default_queue)
        task_default_queue = "from-module"
    """)
    conf = Config()
    probe.CONF = conf
    conf.from_object(cfg_name)
    assert conf.task_default_queue == "from-module"
    assert probe.SEEN == ["celery"]


def test_lazy_dotted_module_source(make_module: Callable[[str, str], str]) -> None:
    name = make_module("plainconf", "task_default_queue = 'plain'\n")
    conf = Config()
    conf.from_object(name)
    assert name not in sys.modules
    assert conf.task_default_queue == "plain"


def test_lazy_source_force_and_errors() -> None:
    conf = Config()
    conf.from_object("no_such_module_celeriac_xyz", silent=True)
    assert conf.task_default_queue == "celery"

    conf.from_object("no_such_module_celeriac_xyz")
    conf.broker_url = "redis://ok"  # writing is fine while unloaded
    with pytest.raises(ImproperlyConfigured, match="no_such_module_celeriac_xyz"):
        conf.broker_url  # noqa: B018
    with pytest.raises(ImproperlyConfigured):  # still failing on the next read
        conf.task_serializer  # noqa: B018
    with pytest.raises(ImproperlyConfigured):
        conf.from_object("no_such_module_celeriac_xyz", force=True)
    with pytest.raises(ImproperlyConfigured, match="nothing"):
        conf.from_object("json:nothing", force=True)
    conf.from_object({})
    assert conf.broker_url == "redis://ok"


def test_from_envvar(make_module: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    name = make_module("envconf", "CELERYD_CONCURRENCY = 5\n")
    conf = Config()
    monkeypatch.delenv("CELERIAC_TEST_CONFIG", raising=False)
    assert conf.from_envvar("CELERIAC_TEST_CONFIG", silent=True) is False
    with pytest.raises(ImproperlyConfigured, match="CELERIAC_TEST_CONFIG"):
        conf.from_envvar("CELERIAC_TEST_CONFIG")
    monkeypatch.setenv("CELERIAC_TEST_CONFIG", name)
    assert conf.from_envvar("CELERIAC_TEST_CONFIG") is True
    assert name not in sys.modules
    assert conf.worker_concurrency == 5


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://env/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://env/1")
    monkeypatch.setenv("CELERY_WORKER_CONCURRENCY", "6")
    monkeypatch.setenv("CELERY_TASK_ALWAYS_EAGER", "yes")
    monkeypatch.setenv("CELERY_ACCEPT_CONTENT", "json,msgpack")
    monkeypatch.setenv("CELERY_BROKER_TRANSPORT_OPTIONS", '{"visibility_timeout": 60}')
    monkeypatch.setenv("CELERY_RESULT_EXPIRES", "30")
    monkeypatch.setenv("CELERY_CONFIG_MODULE", "ignored.unknown")
    monkeypatch.setenv("CELERY_TASK_ACKS_LATE", "")
    conf = Config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = conf.from_env()
    assert loaded["broker_url"] == "redis://env/0"
    assert conf.broker_url == "redis://env/0"
    assert conf.result_backend == "redis://env/1"
    assert conf.worker_concurrency == 6
    assert conf.task_always_eager is True
    assert conf.accept_content == ["json", "msgpack"]
    assert conf.broker_transport_options == {"visibility_timeout": 60}
    assert conf.get_seconds("result_expires") == 30.0
    assert conf.task_acks_late is False
    assert "config_module" not in conf
    assert conf.source_of("worker_concurrency") == "env"


def test_from_env_mapping_old_names_and_errors() -> None:
    conf = Config()
    conf.from_env({"CELERY_ALWAYS_EAGER": "1", "CELERY_TASK_ALWAYS_EAGER": "0", "PATH": "/bin"})
    assert conf.task_always_eager is False  # the new spelling wins
    conf.from_env({})  # replaces the env layer
    assert conf.source_of("task_always_eager") == "default"
    with pytest.raises(ImproperlyConfigured,
                       match=r"worker_prefetch_multiplier.*CELERY_WORKER_PREFETCH_MULTIPLIER.*'many'"):
        conf.from_env({"CELERY_WORKER_PREFETCH_MULTIPLIER": "many"})


# --------------------------------------------------------------------------- precedence


def test_precedence_of_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ["task_default_queue", "task_serializer", "broker_url", "result_backend",
            "worker_concurrency", "task_default_priority"]
    conf = Config(explicit={"broker_url": "explicit://", "result_backend": "explicit://",
                            "worker_concurrency": 30, "task_default_priority": None})
    conf.setdefault("task_default_priority", 1)
    conf.from_object({
        "task_default_queue": "object", "task_serializer": "object",
        "broker_url": "object://", "result_backend": "object://", "worker_concurrency": 10,
        "task_default_priority": 2,
    })
    monkeypatch.setenv("CELERY_TASK_SERIALIZER", "env")
    monkeypatch.setenv("CELERY_BROKER_URL", "env://")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "env://")
    monkeypatch.setenv("CELERY_WORKER_CONCURRENCY", "20")
    conf.from_env()
    conf.update(result_backend="user://", worker_concurrency=40)
    conf.set_cli(worker_concurrency=50, broker_url=None)
    got = {k: conf[k] for k in keys}
    assert got == {
        "task_default_queue": "object",
        "task_serializer": "env",
        "broker_url": "explicit://",
        "result_backend": "user://",
        "worker_concurrency": 50,
        "task_default_priority": 2,
    }
    assert [conf.source_of(k) for k in keys] == ["object", "env", "explicit", "user", "cli", "object"]
    # a config object loaded later does not undo user writes or higher layers
    conf.from_object({"result_backend": "later://", "worker_concurrency": 1, "task_default_queue": "later"})
    assert (conf.result_backend, conf.worker_concurrency, conf.task_default_queue) == ("user://", 50, "later")
    conf.set_explicit(task_default_queue="explicit")
    assert conf.task_default_queue == "explicit"
    assert LAYERS == ("fallback", "object", "env", "explicit", "user", "cli")


def test_odd_user_keys_do_not_shadow_methods() -> None:
    conf = Config()
    conf["keys"] = "mine"
    conf["my-key"] = 1
    conf.worker_concurrency = 2
    assert conf["keys"] == "mine" and callable(conf.keys)
    assert conf["my-key"] == 1 and conf.worker_concurrency == 2
    assert "keys" in conf.changes


def test_concurrent_reads_and_writes() -> None:
    import threading

    conf = Config()
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(300):
            conf.worker_prefetch_multiplier = i
            conf.update(task_default_queue=f"q{i}")

    def reader() -> None:
        try:
            for _ in range(3000):
                assert isinstance(conf.worker_prefetch_multiplier, int)
                assert conf.task_serializer == "json"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (conf.worker_prefetch_multiplier, conf.task_default_queue) == (299, "q299")


def test_cache_is_invalidated_on_every_write() -> None:
    conf = Config()
    for i in range(5):
        conf.worker_prefetch_multiplier = i
        assert conf.worker_prefetch_multiplier == i
    conf.set_cli(worker_prefetch_multiplier=9)
    assert conf.worker_prefetch_multiplier == 9
    conf.worker_prefetch_multiplier = 1
    assert conf.worker_prefetch_multiplier == 9  # CLI still wins


# --------------------------------------------------------------------------- reporting


def test_changes_lists_only_non_defaults() -> None:
    conf = Config()
    assert conf.changes == {}
    conf.task_serializer = "json"  # equal to the default
    conf.accept_content = ("json",)
    conf.worker_concurrency = 4
    conf.my_key = "v"
    assert conf.changes == {"worker_concurrency": 4, "my_key": "v"}


def test_table_and_humanize_censor_secrets() -> None:
    conf = Config()
    conf.broker_url = "redis://user:hunter2@localhost:6379/0"
    conf.security_key = "/etc/key.pem"
    conf.task_default_routing_key = "rk"
    conf.broker_transport_options = {"password": "pw", "region": "eu"}
    table = conf.table()
    assert table["broker_url"] == "redis://user:********@localhost:6379/0"
    assert table["security_key"] == "********"
    assert table["task_default_routing_key"] == "rk"
    assert table["broker_transport_options"] == {"password": "********", "region": "eu"}
    assert conf.table(censored=False)["broker_url"].endswith("hunter2@localhost:6379/0")
    assert "task_serializer" not in table
    assert conf.table(with_defaults=True)["task_serializer"] == "json"
    text = conf.humanize()
    assert "hunter2" not in text
    assert text.splitlines()[0].startswith("broker_transport_options: ")
    assert "task_serializer: 'json'" in conf.humanize(with_defaults=True)


def test_pickle_round_trip() -> None:
    conf = Config(explicit={"broker_url": "redis://x"})
    conf.worker_concurrency = 3
    clone = pickle.loads(pickle.dumps(conf))
    assert clone.broker_url == "redis://x" and clone.worker_concurrency == 3
    clone.worker_concurrency = 4
    assert conf.worker_concurrency == 3
