"""The real Celery for side-by-side runs: its own virtualenv, shared with the interop tests."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CELERY_VENV = os.environ.get("CELERIAC_CELERY_VENV") or os.path.join(os.path.dirname(HERE), ".venv-celery")


def celery_python() -> str:
    """The Celery venv's interpreter, creating the venv (``pip install 'celery[redis]'``) if missing."""
    py = os.path.join(CELERY_VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {CELERY_VENV} with celery[redis] ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", CELERY_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "celery[redis]>=5.3"], check=True)
    return py
