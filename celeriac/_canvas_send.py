"""Sending a canvas: every message it needs now, built first and published in one round trip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import signals
from .result import AsyncResult


class Batch:
    """Messages to publish together (``broker.publish_many``), and what must happen just
    before (a chord's size is recorded before its header is sent)."""

    def __init__(self, app: Any) -> None:
        app._configure()
        self.app = app
        self.items: list[Any] = []
        self._before: list[Callable[[], None]] = []

    def add(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any],
            task: Any = None) -> AsyncResult[Any]:
        """Build one task message from signature options; returns its result."""
        from .brokers import PublishItem
        if task is not None and task.typing:
            task._check_arguments(args, kwargs)  # a TypeError here, not a failure on the worker
        opts = dict(options)
        task_id = opts.pop("task_id", None)
        opts.pop("add_to_parent", None)
        env, queue, not_before = self.app._message(name, args, kwargs, task_id, task, opts)
        self.items.append(PublishItem(env, queue, not_before))
        return AsyncResult(env.headers["id"], app=self.app, task_name=name)

    def before_publish(self, fn: Callable[[], None]) -> None:
        self._before.append(fn)

    def flush(self) -> None:
        for fn in self._before:
            fn()
        self._before = []
        items, self.items = self.items, []
        if not items:
            return
        before, after = signals.before_task_publish, signals.after_task_publish
        if before._receivers:
            for item in items:
                h = item.envelope.headers
                before.send(sender=h["task"], body=None, exchange="", routing_key=item.queue,
                            headers=h, properties=item.envelope.properties, declare=[], retry_policy=None)
        self.app.broker.publish_many(items)
        if after._receivers:
            for item in items:
                h = item.envelope.headers
                after.send(sender=h["task"], body=None, exchange="", routing_key=item.queue, headers=h)


def attach_parent(result: Any, parent: Any) -> None:
    """Hang ``parent`` above the topmost parent of ``result`` (a chord's body result already
    has its header's GroupResult as parent)."""
    if result is None or parent is None:
        return
    node = result
    seen = 0
    while getattr(node, "parent", None) is not None and seen < 10000:
        node = node.parent
        seen += 1
    if node is not parent:
        node.parent = parent
