"""The messages of one bulk send (``Task.apply_many``), made together.

Every call of a bulk send gets the message ``build_task_message`` would make for it
(the prototype's options, its own arguments and a new id: ``argument_cloner``'s
clones), but a broker that stores kombu's JSON (Redis, SQLite) needs only that text:
:meth:`BulkMessages.kombu_json` writes it straight from the arguments, through one
``%``-format of the prototype's text per message, with no header or property dicts,
no Envelope and no closure.  Brokers that want envelopes get them from
:meth:`BulkMessages.envelopes` (the same messages, the same ids).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from .._fastid import uuid4_many
from . import codecs
from .message import Envelope, _quote, argument_cloner, kombu_template_split, percent_form, to_kombu_json

_REPR_LIMIT = 1024  # safe_repr's
_EMPTY_KWARGS_REPR = _quote("{}")
_ORDER = ("body", "id", "argsrepr", "kwargsrepr", "tag")  # the values kombu_json computes


class BulkMessages:
    """``calls`` (``(args, kwargs)`` pairs) as clones of the prototype ``proto``, with the
    task ids ``ids`` (made here).  ``proto`` is the first call's message built in full;
    only its options are used (its id is not)."""

    __slots__ = ("proto", "calls", "ids", "_clone", "_split", "_tail", "_forms")

    def __init__(self, proto: Envelope, clone: Any, split: tuple[list[str], list[str]] | None,
                 embed: dict[str, Any], calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> None:
        self.proto = proto
        self.calls = calls
        self.ids = uuid4_many(len(calls))
        self._clone = clone
        self._split = split
        # the body is [args, kwargs, embed]: its text ends the same way for every call
        self._tail = ", " + codecs.json_dumps(embed) + "]"
        self._forms: dict[tuple[str, str], tuple[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.calls)

    def envelopes(self) -> list[Envelope]:
        """The messages as envelopes (those ``argument_cloner`` makes, with these ids)."""
        clone = self._clone
        return [clone(args, kwargs, task_id) for (args, kwargs), task_id in zip(self.calls, self.ids, strict=True)]

    def kombu_json(self, exchange: str, routing_key: str, tags: Sequence[str]) -> list[str]:
        """``to_kombu_json`` of each message, with delivery tag ``tags[i]`` for the i-th
        (byte for byte the same text)."""
        split = self._split
        if split is None:
            return [to_kombu_json(env, exchange, routing_key, tag)
                    for env, tag in zip(self.envelopes(), tags, strict=True)]
        form_pick = self._forms.get((exchange, routing_key))
        if form_pick is None:
            form, names = percent_form(*split, {"exchange": _quote(exchange), "routing_key": _quote(routing_key)})
            form_pick = self._forms[(exchange, routing_key)] = (form, itemgetter(*(_ORDER.index(n) for n in names)))
        form, pick = form_pick
        dumps, quote, b64, tail = codecs.json_dumps, _quote, binascii.b2a_base64, self._tail
        empty_kwargs_repr = _EMPTY_KWARGS_REPR
        out: list[str] = []
        append = out.append
        for (args, kwargs), task_id, tag in zip(self.calls, self.ids, tags, strict=True):
            # what clone() encodes: list(args or ()), dict(kwargs or {}); a tuple's JSON is a list's
            if args.__class__ is not tuple:
                args = tuple(args or ())
            if kwargs.__class__ is not dict:
                kwargs = dict(kwargs or {})
            body = (dumps((args, kwargs))[:-1] + tail).encode("utf-8")
            try:  # safe_repr(tuple(args)), inline
                argsrepr = repr(args)
            except Exception as exc:  # a broken __repr__ must not stop a publish
                argsrepr = f"<unrepresentable {type(args).__name__}: {exc!r}>"
            if len(argsrepr) > _REPR_LIMIT:
                argsrepr = argsrepr[:_REPR_LIMIT - 3] + "..."
            if kwargs:
                try:
                    kwargsrepr = repr(kwargs)
                except Exception as exc:
                    kwargsrepr = f"<unrepresentable {type(kwargs).__name__}: {exc!r}>"
                if len(kwargsrepr) > _REPR_LIMIT:
                    kwargsrepr = kwargsrepr[:_REPR_LIMIT - 3] + "..."
                kwargsrepr = quote(kwargsrepr)
            else:
                kwargsrepr = empty_kwargs_repr
            append(form % pick((b64(body, newline=False).decode("ascii"), task_id, quote(argsrepr),
                                kwargsrepr, quote(tag))))
        return out


def bulk_messages(proto: Envelope, embed: dict[str, Any],
                  calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> BulkMessages | None:
    """The messages of ``calls``, each the prototype's message with its own arguments and a
    new id; None when the prototype cannot be cloned (not plain JSON: see argument_cloner)."""
    if proto.content_type != codecs.JSON or proto.headers.get("compression"):
        return None
    split = kombu_template_split(proto, proto.headers.get("root_id") == proto.headers.get("id"))
    return BulkMessages(proto, argument_cloner(proto, embed, split), split, embed, calls)
