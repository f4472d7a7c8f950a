"""The public API: Celery's names importable from celeriac, one import changed."""

from __future__ import annotations

import celeriac
from celeriac import exceptions, result, signals, states


def test_top_level_names():
    for name in ("Celery", "shared_task", "Task", "AsyncResult", "GroupResult", "EagerResult", "ResultSet",
                 "states", "__version__"):
        assert hasattr(celeriac, name), name


def test_celery_named_modules():
    assert states.SUCCESS == "SUCCESS" and states.READY_STATES == {"SUCCESS", "FAILURE", "REVOKED"}
    for name in ("NotRegistered", "MaxRetriesExceededError", "Retry", "Reject", "Ignore", "TimeoutError",
                 "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError", "ChordError",
                 "TaskRevokedError", "ImproperlyConfigured", "OperationalError"):
        assert hasattr(exceptions, name), name
    for name in ("task_prerun", "task_postrun", "task_success", "task_failure", "task_retry", "worker_ready",
                 "before_task_publish", "after_task_publish", "setup_logging"):
        assert isinstance(getattr(signals, name), signals.Signal)
    assert result.AsyncResult is celeriac.AsyncResult


def test_automatic_names_and_overrides():
    app = celeriac.Celery("proj", broker="memory://names", set_as_current=False)

    @app.task
    def plain(x):
        return x

    @app.task(name="custom.name")
    def other(x):
        return x

    class Klass(celeriac.Task):
        name = "klass.task"

        def run(self, x):
            return x * 2

    k = app.register_task(Klass())
    assert plain.name == f"{__name__}.plain" and other.name == "custom.name"
    assert app.tasks["klass.task"] is k and k(3) == 6 and plain(4) == 4
    app.close()


def test_signal_connect_forms():
    seen = []

    @signals.task_success.connect
    def a(sender=None, **kw):
        seen.append(("a", sender))

    @signals.task_success.connect(sender="x.y")
    def b(sender=None, **kw):
        seen.append(("b", sender))

    signals.task_success.send(sender="x.y")
    signals.task_success.send(sender="other")
    assert seen == [("a", "x.y"), ("b", "x.y"), ("a", "other")]
    signals.task_success.disconnect(a)
    signals.task_success.disconnect(b, sender="x.y")
