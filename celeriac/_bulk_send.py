"""A bulk send (``Task.apply_many``): every call in one broker round trip.

The calls differ only in their arguments.  The first is built in full
(``app._message``: options, routes, configuration); when the others can be its clones
(``app._bulk_embed``: no routing function that sees the arguments, no explicit headers)
and none is delayed, all of them go to the broker as one ``BulkMessages``
(``broker.publish_bulk``), whose kombu JSON is written straight from the arguments.
Otherwise each becomes an Envelope (a clone, or built in full) for ``publish_many``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .brokers import PublishItem
from .protocol.bulk import bulk_messages
from .protocol.message import argument_cloner
from .result import AsyncResult


def send_many(app: Any, task: Any, calls: Iterable[tuple[Sequence[Any], dict[str, Any]]],
              options: dict[str, Any]) -> list[AsyncResult[Any]]:
    app._configure()
    calls = calls if isinstance(calls, list) else list(calls)
    if not calls:
        return []
    name = task.name or ""
    if task.typing:  # every call checked before anything is sent
        check = task._check_arguments
        for args, kwargs in calls:
            check(args, kwargs)
    opts = dict(options)
    env, queue, not_before = app._message(name, calls[0][0], calls[0][1], None, task, opts)
    embed = app._bulk_embed(opts)
    if embed is not None and not_before is None:
        batch = bulk_messages(env, embed, calls)
        if batch is not None:
            app.broker.publish_bulk(batch, queue)
            return [AsyncResult(task_id, app=app, task_name=name) for task_id in batch.ids]
    clone = argument_cloner(env, embed) if embed is not None else None
    items = [PublishItem(env, queue, not_before)]
    for args, kwargs in calls[1:]:
        if clone is not None:
            env = clone(args, kwargs)
        else:
            env, queue, not_before = app._message(name, args, kwargs, None, task, dict(options))
        items.append(PublishItem(env, queue, not_before))
    app.broker.publish_many(items)
    return [AsyncResult(it.envelope.headers["id"], app=app, task_name=name) for it in items]
