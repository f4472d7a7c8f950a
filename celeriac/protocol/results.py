"""Result meta (``celery-task-meta-<id>``) and exceptions in their wire form."""

from __future__ import annotations

import builtins
import importlib
import sys
from datetime import datetime, timezone
from time import time_ns as _time_ns
from typing import Any

from ..exceptions import SecurityError

_synthesized: dict[tuple[str, str], type[BaseException]] = {}


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """``{"exc_type", "exc_message", "exc_module"}`` as Celery stores exceptions."""
    cls = type(exc)
    module = cls.__module__
    # Our public exceptions live in celeriac.exceptions; Celery readers import
    # celery.exceptions for the same names, so store them under Celery's module.
    if module == "celeriac.exceptions":
        module = "celery.exceptions"
    args = list(exc.args)
    try:
        from .codecs import json_dumps
        json_dumps(args)
    except (TypeError, ValueError):
        args = [str(exc)]
    return {"exc_type": cls.__qualname__, "exc_message": args, "exc_module": module}


def _resolve(module: str | None, qualname: str) -> type[BaseException]:
    obj: Any = None
    mod_name = module or "builtins"
    if mod_name == "celery.exceptions":
        mod_name = "celeriac.exceptions"
    try:
        mod = sys.modules.get(mod_name) or importlib.import_module(mod_name)
        obj = mod
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        obj = None
    if obj is None:
        if module in (None, "builtins") and hasattr(builtins, qualname):
            obj = getattr(builtins, qualname)
        else:
            key = (module or "", qualname)
            if key not in _synthesized:
                cls = type(qualname.split(".")[-1], (Exception,), {"__module__": module or "builtins"})
                _synthesized[key] = cls
            return _synthesized[key]
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise SecurityError(f"Expected an exception class, got {module}.{qualname} ({type(obj).__name__})")
    return obj


def exception_from_dict(data: Any) -> BaseException:
    """Rebuild an exception from its dict form (or pass an exception through)."""
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, dict) or "exc_type" not in data:
        return Exception(data)
    cls = _resolve(data.get("exc_module"), data["exc_type"])
    message = data.get("exc_message")
    args = message if isinstance(message, (list, tuple)) else [message]
    try:
        return cls(*args)
    except Exception:
        exc = Exception.__new__(cls)
        exc.args = tuple(args)
        return exc


def is_exception_dict(value: Any) -> bool:
    return isinstance(value, dict) and "exc_type" in value and "exc_message" in value


_second: tuple[int, str] = (-1, "")  # (a whole second since the epoch, its ISO text to the second)


def utcnow_iso() -> str:
    """``datetime.now(timezone.utc).isoformat()``, same text (microseconds floored, left out
    when 0), without building a datetime per call: the part up to the second is made once
    per second (a result meta's ``date_done`` is written for every task)."""
    global _second
    sec, us = divmod(_time_ns() // 1000, 1_000_000)
    cached_sec, prefix = _second
    if sec != cached_sec:
        prefix = datetime.fromtimestamp(sec, timezone.utc).isoformat()[:-6]  # no "+00:00"
        _second = (sec, prefix)
    return f"{prefix}.{us:06d}+00:00" if us else prefix + "+00:00"


def make_meta(
    task_id: str,
    status: str,
    result: Any,
    traceback: str | None = None,
    children: list[Any] | None = None,
    *,
    ready: bool,
    group_id: str | None = None,
    parent_id: str | None = None,
    extended: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The task meta object, fields in Celery's order."""
    if isinstance(result, BaseException):
        result = exception_to_dict(result)
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children if children is not None else [],
        "date_done": utcnow_iso() if ready else None,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    if extended:
        meta.update(extended)
    meta["task_id"] = task_id
    return meta
