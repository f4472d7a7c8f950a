"""Helpers shared by the Celery interop tests."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

COMPAT_DIR = Path(__file__).resolve().parent


def import_as_celeriac(module_name: str, settings: dict[str, str],
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Import an interop app module (which picks Celery or celeriac by INTEROP_IMPL) as
    celeriac with this test's INTEROP_* settings; close it and forget it afterwards."""
    for key, value in settings.items():
        if key.startswith("INTEROP_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("INTEROP_IMPL", "celeriac")
    monkeypatch.syspath_prepend(str(COMPAT_DIR))
    for name in (module_name, "interop_base"):  # both read this test's settings at import
        sys.modules.pop(name, None)
    module = importlib.import_module(module_name)
    yield module
    module.app.close()
    for name in (module_name, "interop_base"):
        sys.modules.pop(name, None)
    from celeriac import _state
    if _state._current_app is module.app:
        _state._current_app = None
