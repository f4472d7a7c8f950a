"""Serializers and compression, with kombu's names and MIME types.

JSON is the default and the only accepted type unless ``accept_content`` lists
more.  Non-JSON-native values travel as ``{"__type__": marker, "__value__": v}``
objects, the convention kombu's JSON uses, so Celery peers decode them too.
"""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from collections.abc import Callable, Collection
from datetime import date, datetime, time
from typing import Any

from ..exceptions import ContentDisallowed, DecodeError

JSON = "application/json"
PICKLE = "application/x-python-serialize"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"

# name -> (content_type, content_encoding)
CONTENT_TYPES: dict[str, tuple[str, str]] = {
    "json": (JSON, "utf-8"),
    "pickle": (PICKLE, "binary"),
    "msgpack": (MSGPACK, "binary"),
    "yaml": (YAML, "utf-8"),
}
_NAMES = {mime: name for name, (mime, _) in CONTENT_TYPES.items()}


def resolve_content_type(name_or_mime: str) -> str:
    """``'json'`` or ``'application/json'`` -> ``'application/json'``; unknown -> ValueError."""
    if name_or_mime in _NAMES:
        return name_or_mime
    try:
        return CONTENT_TYPES[name_or_mime][0]
    except KeyError:
        raise ValueError(
            f"Unknown serializer {name_or_mime!r} (known: {', '.join(CONTENT_TYPES)})"
        ) from None


def accept_set(accept: Collection[str] | None) -> frozenset[str]:
    """Normalise an ``accept_content`` list to MIME types."""
    return frozenset(resolve_content_type(a) for a in (accept or ("json",)))


# -- JSON with typed values ---------------------------------------------------------

def _as(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def _default(o: Any) -> Any:
    reducer = getattr(o, "__json__", None)
    if reducer is not None:
        return reducer()
    if isinstance(o, datetime):
        return _as("datetime", o.isoformat())
    if isinstance(o, date):
        return _as("date", o.isoformat())
    if isinstance(o, time):
        return _as("time", o.isoformat())
    if type(o).__name__ == "Decimal":
        return _as("decimal", str(o))
    if isinstance(o, uuid.UUID):
        return _as("uuid", o.hex)
    if isinstance(o, (bytes, bytearray)):
        try:
            return _as("bytes", bytes(o).decode("utf-8"))
        except UnicodeDecodeError:
            return _as("base64", base64.b64encode(o).decode("ascii"))
    if isinstance(o, (set, frozenset)):
        return list(o)
    if hasattr(o, "_asdict"):
        return o._asdict()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "decimal": lambda v: __import__("decimal").Decimal(v),
    "uuid": lambda v: uuid.UUID(v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v),
}


def _object_hook(d: dict[str, Any]) -> Any:
    if len(d) == 2 and "__type__" in d and "__value__" in d:
        decoder = _DECODERS.get(d["__type__"])
        if decoder is not None:
            return decoder(d["__value__"])
    return d


_encoder = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(", ", ": "))
_decoder = json.JSONDecoder(object_hook=_object_hook)
# The same encoder without the circular-reference bookkeeping, made once (JSONEncoder
# builds one per call): half the cost for the small documents tasks send.  A circular
# value ends in RecursionError there, and is then encoded again by _encoder, which
# reports it as ValueError("Circular reference detected") as before.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_fast_encode = (_c_make_encoder(None, _default, json.encoder.encode_basestring, None, ": ", ", ",
                                False, False, True) if _c_make_encoder is not None else None)


def json_dumps(obj: Any) -> str:
    if _fast_encode is not None:
        try:
            return "".join(_fast_encode(obj, 0))
        except RecursionError:
            pass
    return _encoder.encode(obj)


def whole_document(decoder: json.JSONDecoder) -> Callable[[str], Any]:
    """``decoder.decode`` for a document that starts and ends with its value (no white space
    around it, as every encoder here and kombu's write it): the decoder's scanner alone,
    without the two white-space regex matches of ``decode``.  Anything else (white space
    around the value, extra data, an error) goes to ``decode``: the same value or error."""
    scan, decode = decoder.scan_once, decoder.decode  # type: ignore[attr-defined]

    def loads(s: str) -> Any:
        try:
            obj, end = scan(s, 0)
        except (StopIteration, ValueError):
            return decode(s)
        return obj if end == len(s) else decode(s)

    return loads


_decode_whole = whole_document(_decoder)
_decode_plain = whole_document(json.JSONDecoder())  # no object hook


def json_loads(s: str | bytes) -> Any:
    if isinstance(s, (bytes, bytearray, memoryview)):
        s = bytes(s).decode("utf-8")
    if "__type__" in s or "\\u" in s:  # a tagged value may be in there (its key maybe escaped)
        return _decode_whole(s)
    return _decode_plain(s)  # no such key: the hook would return every object as it is


# -- generic dumps/loads ----------------------------------------------------------

def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialize ``obj``; returns ``(content_type, content_encoding, payload)``."""
    mime = resolve_content_type(serializer)
    if mime == JSON:
        return JSON, "utf-8", json_dumps(obj).encode("utf-8")
    if mime == PICKLE:
        import pickle
        return PICKLE, "binary", pickle.dumps(obj, protocol=4)
    if mime == MSGPACK:
        try:
            import msgpack  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ValueError("The msgpack serializer needs 'pip install msgpack'") from exc
        return MSGPACK, "binary", msgpack.packb(obj, use_bin_type=True)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ValueError("The yaml serializer needs 'pip install PyYAML'") from exc
    return YAML, "utf-8", yaml.safe_dump(obj).encode("utf-8")


def loads(
    data: bytes | str,
    content_type: str | None,
    content_encoding: str | None = None,
    accept: Collection[str] | None = None,
) -> Any:
    """Deserialize a payload, refusing content types not in ``accept`` (MIME types)."""
    mime = content_type or JSON
    if accept is not None and mime not in accept:
        raise ContentDisallowed(
            f"Refusing to deserialize untrusted content of type {_NAMES.get(mime, mime)} "
            f"({mime}); accept_content is {sorted(_NAMES.get(a, a) for a in accept)}"
        )
    try:
        if mime == JSON:
            return json_loads(data)
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if mime == PICKLE:
            import pickle
            return pickle.loads(raw)
        if mime == MSGPACK:
            import msgpack
            return msgpack.unpackb(raw, raw=False)
        if mime == YAML:
            import yaml
            return yaml.safe_load(raw)
    except ContentDisallowed:
        raise
    except Exception as exc:
        raise DecodeError(f"Cannot decode {mime} payload: {exc!r}") from exc
    raise ContentDisallowed(f"Unsupported content type {mime!r}")


# -- compression --------------------------------------------------------------------

COMPRESSIONS: dict[str, str] = {
    "zlib": "application/x-gzip",  # kombu's name: it is a zlib stream
    "gzip": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "lzma": "application/x-lzma",
}


def compress(data: bytes, method: str) -> tuple[str, bytes]:
    mime = COMPRESSIONS.get(method, method)
    if mime == "application/x-gzip":
        return mime, zlib.compress(data)
    if mime == "application/x-bz2":
        import bz2
        return mime, bz2.compress(data)
    if mime == "application/x-lzma":
        import lzma
        return mime, lzma.compress(data)
    raise ValueError(f"Unknown compression {method!r} (known: {', '.join(COMPRESSIONS)})")


def decompress(data: bytes, mime: str) -> bytes:
    try:
        if mime == "application/x-gzip":
            return zlib.decompress(data)
        if mime == "application/x-bz2":
            import bz2
            return bz2.decompress(data)
        if mime == "application/x-lzma":
            import lzma
            return lzma.decompress(data)
    except Exception as exc:
        raise DecodeError(f"Cannot decompress {mime} body: {exc!r}") from exc
    raise DecodeError(f"Unsupported compression {mime!r}")


RESULT_MAGIC = b"\x00celery-compressed\x00"


def maybe_decompress_result(raw: bytes) -> bytes:
    """Undo Celery 5.7's ``result_compression`` framing if present."""
    if raw.startswith(RESULT_MAGIC):
        rest = raw[len(RESULT_MAGIC):]
        mime, _, payload = rest.partition(b"\x00")
        return decompress(payload, mime.decode())
    return raw
