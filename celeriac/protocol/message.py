"""Envelopes and Celery task protocol v2 messages.

An :class:`Envelope` is what every broker carries: serialized body bytes plus
headers and properties.  :func:`to_kombu_json` / :func:`from_kombu_json` give the
JSON form kombu's virtual transports (Redis) store, which our SQLite broker
stores too.  :class:`TaskMessage` is the decoded view a worker dispatches on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from .._fastid import getpid, uuid4
from ..exceptions import DecodeError, InvalidTaskError
from . import codecs

HOSTNAME = socket.gethostname()
_ORIGIN: list[Any] = [0, ""]


def _origin() -> str:
    """Celery's ``origin`` header, ``gen<pid>@<host>``, made once per process."""
    pid = getpid()
    if _ORIGIN[0] != pid:
        _ORIGIN[:] = [pid, f"gen{pid}@{HOSTNAME}"]
    return str(_ORIGIN[1])
EMPTY_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(slots=True)
class Envelope:
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str = codecs.JSON
    content_encoding: str = "utf-8"
    # (exchange, routing key, delivery tag) -> to_kombu_json's text, when a template can
    # make it (argument_cloner's messages); None: encode the dicts
    render: Any = field(default=None, compare=False, repr=False)

    @property
    def priority(self) -> int:
        p = self.properties.get("priority")
        return p if isinstance(p, int) else 0


_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_fast_encode = (_c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
                                ": ", ", ", False, False, True) if _c_make_encoder is not None else None)


def _dumps(obj: Any) -> str:
    """``json.dumps(obj)``, with an encoder made once (json.dumps builds one per call)."""
    if _fast_encode is not None:
        try:
            return "".join(_fast_encode(obj, 0))
        except RecursionError:
            pass  # circular: json.dumps says so (ValueError)
    return json.dumps(obj)


def to_kombu_json(env: Envelope, exchange: str, routing_key: str, delivery_tag: str) -> str:
    """The envelope as kombu's Redis transport stores it (body base64-encoded)."""
    if env.render is not None:
        return str(env.render(exchange, routing_key, delivery_tag))
    props = dict(env.properties)
    props["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    props.setdefault("priority", 0)
    props["body_encoding"] = "base64"
    props["delivery_tag"] = delivery_tag
    return _dumps(
        {
            "body": base64.b64encode(env.body).decode("ascii"),
            "content-encoding": env.content_encoding,
            "content-type": env.content_type,
            "headers": env.headers,
            "properties": props,
        }
    )


_decode_json = codecs.whole_document(json.JSONDecoder())


def from_kombu_json(raw: str | bytes) -> Envelope:
    """Parse kombu's JSON envelope; raises DecodeError when it is not one."""
    try:
        try:  # kombu's envelopes are UTF-8 JSON: straight to the decoder
            data = _decode_json(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except ValueError:  # json.loads also reads UTF-16/32 and a BOM (or says why not)
            data = json.loads(raw)
        # the decoder's dicts are fresh: copied only when they are something else
        props = data.get("properties") or {}
        if props.__class__ is not dict:
            props = dict(props)
        body = data["body"]
        if props.get("body_encoding") == "base64":
            body_bytes = base64.b64decode(body)
        elif isinstance(body, str):
            body_bytes = body.encode("utf-8")
        else:
            body_bytes = json.dumps(body).encode("utf-8")
        return Envelope(
            body=body_bytes,
            headers=headers if (headers := data.get("headers") or {}).__class__ is dict else dict(headers),
            properties=props,
            content_type=data.get("content-type") or codecs.JSON,
            content_encoding=data.get("content-encoding") or "utf-8",
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DecodeError(f"Not a task envelope: {exc!r}") from exc


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat()


def parse_iso(value: str | None) -> datetime | None:
    """ISO-8601 -> aware datetime (naive values are UTC, as Celery reads them)."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidTaskError(f"Bad ISO-8601 time {value!r}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def safe_repr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not stop a publish
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class TaskMessage:
    """A decoded task message (protocol v2, or v1/hybrid converted to it)."""

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    headers: dict[str, Any]
    properties: dict[str, Any]
    eta: datetime | None = None
    expires: datetime | None = None

    @property
    def retries(self) -> int:
        return int(self.headers.get("retries") or 0)

    @property
    def timelimit(self) -> tuple[float | None, float | None]:
        tl = self.headers.get("timelimit") or (None, None)
        return (tl[0], tl[1]) if len(tl) == 2 else (None, None)

    @property
    def root_id(self) -> str:
        return self.headers.get("root_id") or self.id

    @property
    def parent_id(self) -> str | None:
        return self.headers.get("parent_id")

    @property
    def group(self) -> str | None:
        return self.headers.get("group")

    @property
    def group_index(self) -> int | None:
        return self.headers.get("group_index")

    @property
    def shadow(self) -> str | None:
        return self.headers.get("shadow")

    @property
    def ignore_result(self) -> bool:
        return bool(self.headers.get("ignore_result"))

    @property
    def reply_to(self) -> str | None:
        return self.properties.get("reply_to")

    @property
    def priority(self) -> int:
        p = self.properties.get("priority")
        return p if isinstance(p, int) else 0

    @property
    def argsrepr(self) -> str:
        return self.headers.get("argsrepr") or safe_repr(tuple(self.args))

    @property
    def kwargsrepr(self) -> str:
        return self.headers.get("kwargsrepr") or safe_repr(self.kwargs)


def build_task_message(
    task: str,
    task_id: str,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    eta: datetime | None = None,
    expires: datetime | None = None,
    retries: int = 0,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    shadow: str | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    errbacks: list[dict[str, Any]] | None = None,
    chain: list[dict[str, Any]] | None = None,
    chord: dict[str, Any] | None = None,
    ignore_result: bool = False,
    priority: int | None = None,
    reply_to: str | None = None,
    origin: str | None = None,
    serializer: str = "json",
    compression: str | None = None,
    extra_headers: dict[str, Any] | None = None,
    replaced_task_nesting: int = 0,
    stamped_headers: list[str] | None = None,
    stamps: dict[str, Any] | None = None,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
) -> Envelope:
    """Build a protocol v2 envelope exactly as Celery 5 sends it (19 headers)."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    content_type, content_encoding, body = codecs.dumps([args, kwargs, embed], serializer)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": shadow,
        "eta": iso(eta),
        "expires": iso(expires),
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr if argsrepr is not None else safe_repr(tuple(args)),
        "kwargsrepr": kwargsrepr if kwargsrepr is not None else safe_repr(kwargs),
        "origin": origin or _origin(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": replaced_task_nesting,
        "stamped_headers": stamped_headers,
        "stamps": stamps or {},
    }
    if extra_headers:
        headers.update(extra_headers)
    if compression:
        mime, body = codecs.compress(body, compression)
        headers["compression"] = mime
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": reply_to or "",
        "delivery_mode": 2,
        "priority": priority if priority is not None else 0,
    }
    if expires is not None:
        ttl_ms = (expires - datetime.now(timezone.utc)).total_seconds() * 1000
        properties["expiration"] = str(max(int(ttl_ms), 0))
    return Envelope(body, headers, properties, content_type, content_encoding)


def argument_cloner(proto: Envelope, embed: dict[str, Any], split: Any = False) -> Any:
    """For a bulk send: a function ``(args, kwargs, task_id=None) -> Envelope`` making the
    message that ``build_task_message`` would make with the same options and other
    arguments (a new id unless one is given; root_id follows it when the prototype is its
    own root), at a fraction of the cost.  None when the prototype is not plain JSON
    (compressed, another serializer).  ``split``: kombu_template_split's answer for
    ``proto``, when the caller has it."""
    if proto.content_type != codecs.JSON or proto.headers.get("compression"):
        return None
    headers, props = proto.headers, proto.properties
    own_root = headers.get("root_id") == headers.get("id")
    dumps = codecs.json_dumps
    render = _kombu_template(proto, own_root, split)

    def clone(args: Any, kwargs: Any, task_id: str | None = None) -> Envelope:
        if task_id is None:
            task_id = uuid4()
        args = list(args or ())
        kwargs = dict(kwargs or {})
        h = dict(headers)
        h["id"] = task_id
        if own_root:
            h["root_id"] = task_id
        argsrepr = h["argsrepr"] = safe_repr(tuple(args))
        kwargsrepr = h["kwargsrepr"] = safe_repr(kwargs)
        p = dict(props)
        p["correlation_id"] = task_id
        body = dumps([args, kwargs, embed]).encode("utf-8")
        env = Envelope(body, h, p, codecs.JSON, "utf-8")
        if render is not None:
            env.render = lambda exchange, routing_key, tag: render(
                body, task_id, argsrepr, kwargsrepr, exchange, routing_key, tag)
        return env

    return clone


# The slots of a kombu JSON template, in the order of render()'s arguments.  "body" and
# "id" are filled in quotes as they are (base64, a UUID); the others are JSON-quoted.
SLOTS = ("body", "id", "argsrepr", "kwargsrepr", "exchange", "routing_key", "tag")
_RAW_SLOTS = ("body", "id")


_TOKEN = uuid4().replace("-", "")  # marks the slots in a template's text (random: no user text has it)
_MARK = {name: f"SLOT{_TOKEN}{name}" for name in SLOTS}
_SLOT_RE = re.compile(f'"SLOT{_TOKEN}({"|".join(SLOTS)})"')


def kombu_template_split(proto: Envelope, own_root: bool) -> tuple[list[str], list[str]] | None:
    """to_kombu_json's text for a clone of ``proto`` cut at its per-message values:
    ``(parts, order)``, the text being ``parts[0] + value(order[0]) + parts[1] + ...``
    with each slot's value in its JSON form (quotes included).  None when the
    prototype's text does not split cleanly."""
    mark = _MARK
    h = dict(proto.headers)
    h["id"] = mark["id"]
    if own_root:
        h["root_id"] = mark["id"]
    h["argsrepr"], h["kwargsrepr"] = mark["argsrepr"], mark["kwargsrepr"]
    p = dict(proto.properties)
    p["correlation_id"] = mark["id"]
    text = to_kombu_json(Envelope(b"", h, p, proto.content_type, proto.content_encoding),
                         mark["exchange"], mark["routing_key"], mark["tag"])
    text = text.replace('"body": ""', f'"body": "{mark["body"]}"', 1)
    pieces = _SLOT_RE.split(text)
    parts, order = pieces[0::2], pieces[1::2]
    if sorted(set(order)) != sorted(SLOTS) or any(_TOKEN in part for part in parts):
        return None
    return parts, order


def percent_form(parts: list[str], order: list[str], fixed: dict[str, str]) -> tuple[str, list[str]]:
    """The template as one ``%``-format: ``(form, names)``, ``form % values`` being the
    text when ``values`` are the slots' values (JSON-quoted, except the raw slots) in
    the order of ``names``.  Slots in ``fixed`` are written in (their JSON form)."""
    out = [parts[0].replace("%", "%%")]
    names: list[str] = []
    for name, part in zip(order, parts[1:], strict=True):
        if name in fixed:
            out.append(fixed[name].replace("%", "%%"))
        else:
            out.append('"%s"' if name in _RAW_SLOTS else "%s")
            names.append(name)
        out.append(part.replace("%", "%%"))
    return "".join(out), names


def _kombu_template(proto: Envelope, own_root: bool, split: Any = False) -> Any:
    """to_kombu_json's text for a clone of ``proto``, by filling slots in the prototype's
    text instead of encoding two dicts: ``render(body, id, argsrepr, kwargsrepr, exchange,
    routing_key, tag)``.  None when the prototype's text does not split cleanly."""
    if split is False:
        split = kombu_template_split(proto, own_root)
    if split is None:
        return None
    parts, order = split
    form, names = percent_form(parts, order, {})
    pick = itemgetter(*(SLOTS.index(name) for name in names))
    b64 = binascii.b2a_base64
    quote = _quote

    def render(body: bytes, task_id: str, argsrepr: str, kwargsrepr: str, exchange: str,
               routing_key: str, tag: str) -> str:
        return form % pick((b64(body, newline=False).decode("ascii"), task_id, quote(argsrepr),
                            quote(kwargsrepr), quote(exchange), quote(routing_key), quote(tag)))

    return render


def decode_task_message(env: Envelope, accept: frozenset[str] | None = None) -> TaskMessage:
    """Decode an envelope into a TaskMessage.

    Accepts protocol v2, the v1 body-only form and the hybrid form (v2 headers
    with a dict body).  Raises ContentDisallowed, DecodeError or InvalidTaskError
    with a message that says what is wrong.
    """
    body = env.body
    compression = env.headers.get("compression")
    if compression:
        body = codecs.decompress(body, compression)
    payload = codecs.loads(body, env.content_type, env.content_encoding, accept)
    headers = env.headers
    if "task" in headers:  # protocol v2 (or hybrid)
        if isinstance(payload, dict):  # hybrid
            args, kwargs, embed = payload.get("args", []), payload.get("kwargs", {}), payload
        else:
            if not isinstance(payload, (list, tuple)) or len(payload) != 3:
                raise InvalidTaskError(
                    f"Task body must be [args, kwargs, embed], got {type(payload).__name__}"
                )
            args, kwargs, embed = payload
        task_id = headers.get("id")
        if not task_id:
            raise InvalidTaskError("Task message has no 'id' header")
        hdrs = headers
    elif isinstance(payload, dict) and "task" in payload:  # protocol v1
        task_id = payload.get("id")
        if not task_id:
            raise InvalidTaskError("Protocol v1 task body has no 'id'")
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        embed = {
            "callbacks": payload.get("callbacks"),
            "errbacks": payload.get("errbacks"),
            "chain": None,
            "chord": payload.get("chord"),
        }
        hdrs = {
            "task": payload["task"],
            "id": task_id,
            "eta": payload.get("eta"),
            "expires": payload.get("expires"),
            "group": payload.get("taskset") or payload.get("group"),
            "group_index": payload.get("group_index"),
            "retries": payload.get("retries", 0),
            "timelimit": payload.get("timelimit") or [None, None],
            "root_id": task_id,
            "parent_id": None,
        }
    else:
        raise InvalidTaskError("Message has no 'task' header and is not a protocol v1 body")
    if not isinstance(args, (list, tuple)):
        raise InvalidTaskError(f"Task args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise InvalidTaskError(f"Task kwargs must be an object, got {type(kwargs).__name__}")
    return TaskMessage(
        task=hdrs["task"],
        id=str(task_id),
        args=list(args),
        kwargs=kwargs,
        embed=embed if isinstance(embed, dict) else dict(EMPTY_EMBED),
        headers=hdrs,
        properties=env.properties,
        eta=parse_iso(hdrs.get("eta")),
        expires=parse_iso(hdrs.get("expires")),
    )
