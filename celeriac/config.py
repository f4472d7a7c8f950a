"""Typed configuration behind ``app.conf``, with Celery's setting names.

Every Celery 5 setting is known by its lowercase name (``task_serializer``), by
its pre-4.0 uppercase name (``CELERY_TASK_SERIALIZER``, ``CELERYD_CONCURRENCY``,
``BROKER_URL``...) and by the ``CELERY_``-prefixed form used by Django projects
and environment variables (``CELERY_WORKER_CONCURRENCY``). All spellings read
and write the same canonical lowercase entry; the table is in
:mod:`celeriac._settings_table`.

Values are checked when they are set: a wrong type raises
:class:`~celeriac.exceptions.ImproperlyConfigured` naming the setting and the
value; strings are coerced for numeric and boolean settings (``"4"``,
``"yes"``), since environment variables are strings. Unknown keys are kept, but
those that look like settings raise a :class:`UserWarning` with the closest
known name.

Precedence
----------
Values live in layers and are resolved on read, lowest first::

    defaults            Celery 5 defaults (the table)
    < fallback          conf.setdefault(key, value)
    < object            conf.from_object(...) / conf.from_envvar(...)
    < env               conf.from_env() -- CELERY_<SETTING> environment variables
    < explicit          Config(explicit={...}) / conf.set_explicit(...) -- Celery(broker=...)
    < user              conf.x = y, conf['x'] = y, conf.update(...)
    < cli               conf.set_cli(...) -- command-line flags

So ``app.conf.update()`` by user code beats everything except command-line
flags, whenever it happens; loading a config object later never undoes it.

String sources (``conf.from_object('django.conf:settings', namespace='CELERY')``)
are lazy: nothing is imported until a setting is first read. The merged view is
cached and rebuilt only after a write, so reads are a dict lookup.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
import threading
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celeriac._settings_table import COERCERS, DEFAULTS, OLD_NAMES, SETTINGS, InvalidValue, Setting
from celeriac.exceptions import ImproperlyConfigured

__all__ = [
    "Config", "Setting", "SETTINGS", "DEFAULTS", "OLD_NAMES", "LAYERS",
    "canonical_name", "coerce_setting", "looks_like_setting",
]

#: Layers above the defaults, lowest precedence first.
LAYERS: tuple[str, ...] = ("fallback", "object", "env", "explicit", "user", "cli")

_PREFIXES = (
    "broker_", "task_", "worker_", "result_", "beat_", "redis_", "event_", "events_",
    "control_", "database_", "cassandra_", "security_", "cache_", "s3_", "gcs_",
    "azureblockblob_", "elasticsearch_", "cosmosdbsql_", "mongodb_", "couchbase_", "arangodb_",
)
_LOWER_CANDIDATES = sorted(SETTINGS)
_UPPER_CANDIDATES = sorted(set(OLD_NAMES) | {"CELERY_" + n.upper() for n in SETTINGS})
_HIDDEN = re.compile(r"API|TOKEN|(?<!ROUTING_)KEY|SECRET|PASS|SIGNATURE|DATABASE", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.\-]*://[^:/@\s]*:)([^@\s]+)(?=@)", re.IGNORECASE)
_MASK = "********"


# --------------------------------------------------------------------------- names
def _ns_prefix(namespace: str) -> str:
    return namespace.upper().rstrip("_") + "_"


@lru_cache(maxsize=4096)
def canonical_name(key: str, namespace: str | None = None) -> str | None:
    """Return the lowercase setting name ``key`` spells, or ``None`` if unknown.

    Without ``namespace``: a new name, an old uppercase name, or ``CELERY_`` +
    the new name in uppercase. With ``namespace`` (e.g. ``'CELERY'``) only keys
    starting with ``CELERY_`` resolve: the rest is tried as a new name, then the
    whole key and the rest are tried as old names (``CELERY_ALWAYS_EAGER``).
    """
    if not isinstance(key, str):
        return None
    if namespace:
        prefix = _ns_prefix(namespace)
        if not key.upper().startswith(prefix):
            return None
        rest = key[len(prefix):]
        if rest.lower() in SETTINGS:
            return rest.lower()
        return OLD_NAMES.get(key.upper()) or OLD_NAMES.get(rest.upper())
    if key in SETTINGS:
        return key
    if key in OLD_NAMES:
        return OLD_NAMES[key]
    if key.startswith("CELERY_") and key.isupper() and key[7:].lower() in SETTINGS:
        return key[7:].lower()
    return None


def looks_like_setting(key: str) -> bool:
    """True for keys that look like a Celery setting (``task_…``, ``CELERY…``, ``BROKER_…``)."""
    if not isinstance(key, str):
        return False
    if key.islower():
        return key.startswith(_PREFIXES)
    if key.isupper():
        return key.startswith(("CELERY", "BROKER_"))
    return False


def _suggest(key: str) -> str | None:
    if key.isupper():
        import difflib
        found = difflib.get_close_matches(key, _UPPER_CANDIDATES, n=1, cutoff=0.7)
    else:
        import difflib
        found = difflib.get_close_matches(key.lower(), _LOWER_CANDIDATES, n=1, cutoff=0.7)
    return found[0] if found else None


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points at the first frame outside this module."""
    frame = sys._getframe(2)  # the caller of warnings.warn's caller
    level = 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _warn_unknown(key: str, namespace: str | None = None) -> None:
    if namespace:
        prefix = _ns_prefix(namespace)
        match = _suggest(key[len(prefix):].lower())
        if match is not None:
            match = prefix + match.upper() if key.isupper() else prefix.lower() + match
    else:
        match = _suggest(key)
    hint = f" (did you mean {match!r}?)" if match else ""
    warnings.warn(f"Unknown setting {key!r}{hint}", UserWarning, stacklevel=_user_stacklevel())


def coerce_setting(name: str, value: Any, *, origin: str | None = None) -> Any:
    """Validate and coerce ``value`` for the known setting ``name`` (any spelling).

    Raises :class:`ImproperlyConfigured` naming the setting and the value.
    ``origin`` (e.g. ``"environment variable CELERY_X"``) is added to the message.
    """
    setting = SETTINGS[canonical_name(name) or name]
    where = f" (from {origin})" if origin else ""
    if value is None:
        if setting.nullable:
            return None
        raise ImproperlyConfigured(
            f"Invalid value for setting {setting.name!r}{where}: None is not allowed")
    try:
        return COERCERS[setting.kind](value)
    except InvalidValue as exc:
        raise ImproperlyConfigured(
            f"Invalid value for setting {setting.name!r}{where}: {value!r} "
            f"(expected {exc.args[0]})") from None


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _censor(key: Any, value: Any) -> Any:
    if isinstance(key, str) and _HIDDEN.search(key) and value not in (None, "", {}):
        return _MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m.group(1) + _MASK, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_censor(None, v) for v in value)
    if isinstance(value, Mapping):
        return {k: _censor(k, v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------- sources
def _import_object(path: str) -> Any:
    """Import ``'pkg.mod'``, ``'pkg.mod:attr.sub'`` or ``'pkg.mod.attr'``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path or "." not in path:
                raise
            module_name, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


_CODE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
         type, property, classmethod, staticmethod)


def _public_attrs(obj: Any) -> Iterator[tuple[str, Any]]:
    names = list(vars(obj)) if isinstance(obj, types.ModuleType) else dir(obj)
    for name in names:
        if name.startswith("_"):
            continue
        try:
            yield name, getattr(obj, name)
        except AttributeError:
            continue


def _describe(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"config module {obj.__name__}"
    if isinstance(obj, Mapping):
        return "config mapping"
    return f"config object {getattr(obj, '__qualname__', type(obj).__qualname__)}"


# --------------------------------------------------------------------- Config
class Config:
    """The settings behind ``app.conf``: layered, validated, any spelling."""

    def __init__(self, explicit: Mapping[str, Any] | None = None, *,
                 cli: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.RLock()
        self._defaults: dict[str, Any] = copy.deepcopy(DEFAULTS)
        self._layers: dict[str, dict[Any, Any]] = {name: {} for name in LAYERS}
        self._pending: tuple[str, str | None, bool] | None = None
        self._merged: dict[Any, Any] | None = None
        self._mirrored: tuple[str, ...] = ()
        if explicit:
            self._write("explicit", explicit.items(), skip_none=True)
        if cli:
            self._write("cli", cli.items(), skip_none=True)

    # -- reading ---------------------------------------------------------
    def _data(self) -> dict[Any, Any]:
        merged = self._merged
        return merged if merged is not None else self._rebuild()

    def _rebuild(self) -> dict[Any, Any]:
        with self._lock:
            if self._pending is not None:
                self._load_pending()
            merged = dict(self._defaults)
            for name in LAYERS:
                merged.update(self._layers[name])
            # Mirror plain names into the instance dict: ``conf.task_serializer`` is
            # then an ordinary attribute hit, without going through __getattr__.
            cls = type(self)
            unsafe = {k for name in LAYERS for k in self._layers[name] if k not in SETTINGS
                      and not (isinstance(k, str) and k.isidentifier()
                               and not k.startswith("_") and not hasattr(cls, k))}
            mirror = {k: v for k, v in merged.items() if k not in unsafe} if unsafe else merged
            self.__dict__.update(mirror)
            self._mirrored = tuple(mirror)
            self._merged = merged
            return merged

    def _invalidate(self) -> None:
        """Drop the merged view (call with the lock held, after any layer change)."""
        self._merged = None
        for key in self._mirrored:
            self.__dict__.pop(key, None)
        self._mirrored = ()

    def _lookup(self, key: Any) -> Any:
        data = self._data()
        try:
            return data[key]
        except KeyError:
            name = canonical_name(key) if isinstance(key, str) else None
            if name is None:
                raise
            return data[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._lookup(name)
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __getitem__(self, key: Any) -> Any:
        return self._lookup(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (any spelling), or ``default`` when unknown and unset."""
        try:
            return self._lookup(key)
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self._lookup(key)
        except KeyError:
            return False
        return True

    def keys(self) -> Any:
        return self._data().keys()

    def values(self) -> Any:
        return self._data().values()

    def items(self) -> Any:
        return self._data().items()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def copy(self) -> dict[Any, Any]:
        """A plain dict of every effective setting, by canonical name."""
        return dict(self._data())

    def first(self, *keys: str) -> Any:
        """The first of ``keys`` whose value is not ``None`` (or ``None``)."""
        for key in keys:
            value = self.get(key)
            if value is not None:
                return value
        return None

    def find_value_for_key(self, name: str, namespace: str = "celery") -> Any:
        """Celery's helper: ``find_value_for_key('url', 'broker')`` reads ``broker_url``."""
        key = canonical_name(f"{namespace}_{name}".lower()) or canonical_name(name) or name
        return self[key]

    def get_seconds(self, name: str) -> float | None:
        """A duration setting (number or timedelta) as float seconds; ``None`` stays ``None``."""
        value = self[name]
        try:
            return _seconds(value)
        except (TypeError, ValueError):
            raise ImproperlyConfigured(
                f"Setting {name!r} is not a duration in seconds: {value!r}") from None

    def source_of(self, key: str) -> str | None:
        """Which layer the effective value of ``key`` comes from: one of :data:`LAYERS`,
        ``'default'``, or ``None`` for an unknown unset key."""
        name = canonical_name(key) or key
        self._data()
        for layer in reversed(LAYERS):
            if name in self._layers[layer]:
                return layer
        return "default" if name in self._defaults else None

    @property
    def changes(self) -> dict[Any, Any]:
        """The settings whose effective value differs from Celery's default."""
        changed = {}
        for key, value in self._data().items():
            setting = SETTINGS.get(key) if isinstance(key, str) else None
            if setting is None:
                changed[key] = value
            elif setting.kind == "seconds":
                try:
                    if _seconds(value) != _seconds(setting.default):
                        changed[key] = value
                except (TypeError, ValueError):
                    changed[key] = value
            elif not _same(value, setting.default):
                changed[key] = value
        return changed

    def table(self, with_defaults: bool = False, censored: bool = True) -> dict[Any, Any]:
        """Settings as a plain dict: only changes unless ``with_defaults``; secrets
        (keys naming passwords, tokens, keys; passwords in URLs) masked when ``censored``."""
        data = self.copy() if with_defaults else self.changes
        return {k: _censor(k, v) for k, v in data.items()} if censored else data

    def humanize(self, with_defaults: bool = False, censored: bool = True) -> str:
        """``table()`` as sorted ``key: value`` lines, for the ``conf`` inspect command."""
        data = self.table(with_defaults=with_defaults, censored=censored)
        return "\n".join(f"{k}: {v!r}" for k, v in sorted(data.items(), key=lambda kv: str(kv[0])))

    # -- writing ---------------------------------------------------------
    def _prepare(self, key: Any, value: Any, *, namespace: str | None = None,
                 attrs: bool = False, origin: str | None = None) -> tuple[Any, Any, bool] | None:
        """(store key, coerced value, exact spelling?) or ``None`` to skip the key."""
        if not isinstance(key, str):
            return None if attrs or namespace else (key, value, True)
        name = canonical_name(key, namespace)
        if name is not None:
            exact = key == name or (namespace is not None and key[len(_ns_prefix(namespace)):].lower() == name)
            return name, coerce_setting(name, value, origin=origin), exact
        if namespace:
            prefix = _ns_prefix(namespace)
            if not key.upper().startswith(prefix):
                return None
            rest = key[len(prefix):].lower()
            if looks_like_setting(rest):
                _warn_unknown(key, namespace)
            return rest, value, True
        if looks_like_setting(key):
            _warn_unknown(key)
            return key, value, True
        if attrs and (key.isupper() or isinstance(value, _CODE)):
            return None
        return key, value, True

    def _collect(self, items: Iterable[tuple[Any, Any]], *, namespace: str | None = None,
                 attrs: bool = False, origin: str | None = None,
                 skip_none: bool = False) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        exact_keys: set[Any] = set()
        for key, value in items:
            if skip_none and value is None:
                continue
            prepared = self._prepare(key, value, namespace=namespace, attrs=attrs, origin=origin)
            if prepared is None:
                continue
            name, coerced, exact = prepared
            if name in exact_keys and not exact:
                continue  # the new spelling wins over an old one in the same source
            found[name] = coerced
            if exact:
                exact_keys.add(name)
        return found

    def _write(self, layer: str, items: Iterable[tuple[Any, Any]], **kw: Any) -> None:
        found = self._collect(items, **kw)
        with self._lock:
            self._layers[layer].update(found)
            self._invalidate()

    def _replace(self, layer: str, values: dict[Any, Any]) -> None:
        with self._lock:
            self._layers[layer] = values
            self._invalidate()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._write("user", [(name, value)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._write("user", [(key, value)])

    def __delitem__(self, key: Any) -> None:
        """Forget a value set by user code (``update``/assignment); lower layers show again."""
        name = (canonical_name(key) if isinstance(key, str) else None) or key
        with self._lock:
            if name not in self._layers["user"]:
                raise KeyError(key)
            del self._layers["user"][name]
            self._invalidate()

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def update(self, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]] | None = None,
               **kwargs: Any) -> None:
        """Set several settings from user code (the ``user`` layer)."""
        items: list[tuple[Any, Any]] = []
        if mapping is not None:
            items.extend(mapping.items() if isinstance(mapping, Mapping) else mapping)
        items.extend(kwargs.items())
        self._write("user", items)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Set ``key`` only if no layer configures it (the value then acts as a new
        default, below every source); return the effective value."""
        if self.source_of(key) in (None, "default"):
            self._write("fallback", [(key, default)])
        return self[key]

    def set_explicit(self, **kwargs: Any) -> None:
        """Values passed to the app constructor (``Celery(broker=...)``); ``None`` = not given."""
        self._write("explicit", kwargs.items(), skip_none=True)

    def set_cli(self, **kwargs: Any) -> None:
        """Values from command-line flags (highest precedence); ``None`` = flag not given."""
        self._write("cli", kwargs.items(), skip_none=True)

    # -- sources ---------------------------------------------------------
    def from_object(self, obj: Any, namespace: str | None = None, *, silent: bool = False,
                    force: bool = False) -> None:
        """Use ``obj`` as the config-object layer, replacing any previous one.

        ``obj`` is a module, class, instance, mapping, or an import string
        (``'celeryconfig'``, ``'pkg.mod:attr'``). Strings are imported on the first
        read (or now with ``force=True``); with ``silent=True`` an import failure
        leaves the layer empty. With ``namespace='CELERY'`` only ``CELERY_*`` keys
        are taken, the prefix stripped. For modules and objects, uppercase keys that
        are not settings, and functions/classes/modules, are ignored.
        """
        if isinstance(obj, str):
            with self._lock:
                self._pending = (obj, namespace, silent)
                self._layers["object"] = {}
                self._invalidate()
            if force:
                self._rebuild()
            return
        layer = self._layer_from(obj, namespace)
        with self._lock:
            self._pending = None
            self._layers["object"] = layer
            self._invalidate()

    def _layer_from(self, obj: Any, namespace: str | None) -> dict[Any, Any]:
        attrs = not isinstance(obj, Mapping)
        items = _public_attrs(obj) if attrs else obj.items()
        return self._collect(items, namespace=namespace, attrs=attrs, origin=_describe(obj))

    def _load_pending(self) -> None:
        assert self._pending is not None
        path, namespace, silent = pending = self._pending
        self._pending = None  # a read made while importing sees the other layers
        try:
            try:
                obj = _import_object(path)
            except (ImportError, AttributeError) as exc:
                if silent:
                    self._layers["object"] = {}
                    return
                raise ImproperlyConfigured(
                    f"Cannot load the configuration object {path!r}: {exc}") from exc
            self._layers["object"] = self._layer_from(obj, namespace)
        except BaseException:
            self._pending = pending  # stay unloaded; the next read raises again
            raise

    def from_envvar(self, variable_name: str, silent: bool = False, *, force: bool = False) -> bool:
        """``from_object`` the module named by environment variable ``variable_name``.

        Returns ``False`` if the variable is unset and ``silent``; raises
        :class:`ImproperlyConfigured` if unset otherwise.
        """
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ImproperlyConfigured(
                f"The environment variable {variable_name!r} is not set, so the configuration "
                f"cannot be loaded; set it to a module name such as 'celeryconfig'.")
        self.from_object(module_name, silent=silent, force=force)
        return True

    def from_env(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Load ``CELERY_<SETTING>`` variables (default ``os.environ``) as the env layer.

        ``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``, ``CELERY_WORKER_CONCURRENCY``...
        and old names such as ``CELERY_ALWAYS_EAGER``; values are coerced. Unknown
        ``CELERY_*`` variables and empty values are ignored. Replaces the previous
        env layer and returns it.
        """
        env = os.environ if environ is None else environ
        layer: dict[str, Any] = {}
        exact_keys: set[str] = set()
        for key, raw in env.items():
            if not key.startswith("CELERY_") or raw == "":
                continue
            name = canonical_name(key, "CELERY")
            if name is None:
                continue
            exact = key[7:].lower() == name
            if name in exact_keys and not exact:
                continue
            layer[name] = coerce_setting(name, raw, origin=f"environment variable {key}")
            if exact:
                exact_keys.add(name)
        self._replace("env", layer)
        return dict(layer)

    # -- misc ------------------------------------------------------------
    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(SETTINGS))

    def __repr__(self) -> str:
        if self._pending is not None:
            return f"<Config: lazy source {self._pending[0]!r} not loaded yet>"
        return f"<Config: {len(self.changes)} changed settings>"

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k.startswith("_")}
        state.pop("_lock", None)
        state["_merged"], state["_mirrored"] = None, ()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_lock", threading.RLock())


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


# Setting names are mirrored as instance attributes, so none may shadow a method.
if set(SETTINGS) & set(dir(Config)):  # pragma: no cover - a table/API mistake
    raise RuntimeError(f"settings shadow Config methods: {set(SETTINGS) & set(dir(Config))}")
