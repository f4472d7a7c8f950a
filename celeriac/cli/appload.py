"""Finding the app named by ``-A``: ``proj``, ``proj.celery``, ``proj:app``, ``proj.app``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..app import Celery


class AppNotFound(Exception):
    pass


def _from_module(module: Any) -> Celery | None:
    for attr in ("app", "celery"):
        value = getattr(module, attr, None)
        if isinstance(value, Celery):
            return value
    for value in vars(module).values():
        if isinstance(value, Celery):
            return value
    return None


def find_app(spec: str, workdir: str | None = None) -> Celery:
    if workdir:
        os.chdir(workdir)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and "." in module_name and not attr:
            # proj.app -> module proj, attribute app
            parent, _, last = module_name.rpartition(".")
            try:
                module = importlib.import_module(parent)
            except ModuleNotFoundError:
                raise AppNotFound(f"The module {module_name} was not found.") from None
            found = getattr(module, last, None)
            if isinstance(found, Celery):
                return found
            raise AppNotFound(f"The module {module_name} was not found.") from None
        if exc.name and module_name.split(".")[0] == exc.name.split(".")[0] and exc.name in module_name:
            raise AppNotFound(f"The module {module_name} was not found.") from None
        raise AppNotFound(f"Importing {module_name} failed: {exc}") from None
    if attr:
        value: Any = module
        for part in attr.split("."):
            value = getattr(value, part, None)
        if callable(value) and not isinstance(value, Celery):
            value = value()
        if not isinstance(value, Celery):
            raise AppNotFound(f"{spec} is not a Celery application.")
        return value
    app = _from_module(module)
    if app is None and hasattr(module, "__path__"):
        try:
            sub = importlib.import_module(f"{module_name}.celery")
            app = _from_module(sub)
        except ModuleNotFoundError:
            app = None
    if app is None:
        raise AppNotFound(f"No Celery application found in module {module_name} "
                          f"(looked for 'app', 'celery' and any Celery instance).")
    return app
