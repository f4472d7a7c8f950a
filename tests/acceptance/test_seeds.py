"""The seeds' examples, as users wrote them, with real worker processes."""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path

import pytest
from support import WorkerProcess, wait_for, write


@pytest.fixture
def http_server():
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.split(".")[0] in {"tasks", "celery_config", "celery_example", "celery_example_2", "pack"}:
            del sys.modules[name]
    from celeriac import _state
    if _state._current_app is not None:
        _state._current_app.close()
    _state._current_app = None


def test_seed_003_add_delay_get(project: Path):
    """seed 003: tasks.py with add; `celeriac -A tasks worker --loglevel=info`; add.delay(4, 6).get() == 10."""
    write(project / "tasks.py", f"""
        from celeriac import Celery
        app = Celery('tasks', broker='sqlite:///{project}/q.db', backend='sqlite:///{project}/q.db')

        @app.task
        def add(x, y):
            return x + y
    """)
    with WorkerProcess(project, "tasks", "--loglevel=info") as worker:
        from tasks import add  # type: ignore[import-not-found]
        result = add.delay(4, 6)
        assert isinstance(result.id, str) and len(result.id) == 36
        assert result.get(timeout=10) == 10
        assert result.successful() and result.state == "SUCCESS"
        log = wait_for(lambda: "succeeded in" in worker.log() and worker.log(), 10)
        assert f"Received task: tasks.add[{result.id}]" in log
        assert f"Task tasks.add[{result.id}] succeeded in" in log and "s: 10" in log
        assert "[tasks]" in log and "  . tasks.add" in log and "[queues]" in log
        assert worker.stop() == 0


def test_seed_002_include_modules_and_package(project: Path, http_server):
    """seed 002: celery_config with include=[two modules and a package]; print shows in the worker log."""
    url, hits = http_server
    db = project / "broker.db"
    write(project / "celery_config.py", f"""
        from celeriac import Celery
        app = Celery('celery_config', broker='sqlite:///{db}',
                     include=['celery_example', 'celery_example_2', 'pack.celery_example_3'])
    """)
    fetch_src = """
        import urllib.request
        from celery_config import app

        @app.task
        def fetch_url(url):
            resp = urllib.request.urlopen(url)
            print(resp.status)

        def func(urls):
            for url in urls:
                fetch_url.delay(url)
    """
    write(project / "celery_example.py", fetch_src)
    write(project / "celery_example_2.py", """
        from celery_config import app

        @app.task
        def add(a, b):
            return a + b
    """)
    write(project / "pack" / "__init__.py", "")
    write(project / "pack" / "celery_example_3.py", fetch_src)
    # the order seed 002 uses: `celery worker -A celery_config -l info -c 3`
    with WorkerProcess(project, "celery_config", "-l", "info", "-c", "3", app_before=False) as worker:
        log = worker.log()
        for name in ("celery_example.fetch_url", "celery_example_2.add", "pack.celery_example_3.fetch_url"):
            assert f"  . {name}" in log
        assert "concurrency: 3 (prefork)" in log
        from celery_example import func  # type: ignore[import-not-found]
        from celery_example_2 import add  # type: ignore[import-not-found]
        from pack.celery_example_3 import func as func3  # type: ignore[import-not-found]
        func([f"{url}/a", f"{url}/b", f"{url}/c"])
        func3([f"{url}/d"])
        assert add.delay(4, 5).get(timeout=10) == 9
        wait_for(lambda: len(hits) == 4, 20, message="4 fetches")
        log = wait_for(lambda: worker.log().count("succeeded in") >= 5 and worker.log(), 20)
        assert sorted(hits) == ["/a", "/b", "/c", "/d"]
        assert "WARNING/ForkPoolWorker-" in log and "] 200" in log  # the task's print()
        assert "Received task: celery_example.fetch_url[" in log
        assert "Received task: pack.celery_example_3.fetch_url[" in log
        assert "Task celery_example_2.add[" in log and "s: 9" in log


def test_seed_004_hooks_and_django_style_config(project: Path):
    """seed 004: config_from_object(..., namespace='CELERY'), @shared_task(on_failure=, on_success=, name=)."""
    db = project / "s.db"
    write(project / "settings_mod.py", f"""
        CELERY_BROKER_URL = 'sqlite:///{db}'
        CELERY_RESULT_BACKEND = CELERY_BROKER_URL
        CELERY_ACCEPT_CONTENT = ["json"]
        CELERY_TASK_SERIALIZER = "json"
        CELERY_RESULT_SERIALIZER = "json"
        CELERY_TASK_TIME_LIMIT = 30 * 60
        CELERY_RESULT_EXTENDED = True
        CELERY_TASK_TRACK_STARTED = True
        DEBUG = True
    """)
    write(project / "proj" / "__init__.py", "from .celery import app as celery_app\n__all__ = ('celery_app',)\n")
    write(project / "proj" / "celery.py", """
        from celeriac import Celery
        app = Celery('proj')
        app.config_from_object('settings_mod', namespace='CELERY')
        app.autodiscover_tasks(['proj'])
    """)
    write(project / "proj" / "tasks.py", f"""
        from celeriac import shared_task

        def task_failure(exc, task_id, *args, **kwargs):
            open({str(project / 'hooks.txt')!r}, 'a').write('failure\\n')

        def task_success(task, retval, *args, **kwargs):
            open({str(project / 'hooks.txt')!r}, 'a').write(f'success {{retval}}\\n')

        @shared_task(on_failure=task_failure, on_success=task_success, name="Simple function")
        def simple_function(a, b):
            c = a + b
            return c
    """)
    with WorkerProcess(project, "proj", "-l", "info", "-c", "1") as worker:
        assert "  . Simple function" in worker.log()
        from proj import celery_app  # type: ignore[import-not-found]
        celery_app.finalize()
        res = celery_app.send_task("Simple function", (2, 3))
        assert res.get(timeout=10) == 5
        assert res.name == "Simple function" and res.args == [2, 3] and res.kwargs == {}
        bad = celery_app.send_task("Simple function", ("x", 3))
        assert bad.get(timeout=10, propagate=False).__class__ is TypeError
        wait_for(lambda: (project / "hooks.txt").exists()
                 and (project / "hooks.txt").read_text().count("\n") >= 2, 10)
        assert (project / "hooks.txt").read_text().splitlines() == ["success 5", "failure"]
        # re-run a task with its saved arguments (seed 004, result_extended)
        again = celery_app.send_task("Simple function", res.args, res.kwargs)
        assert again.get(timeout=10) == 5
