"""The wire: Celery task protocol v2 envelopes, codecs and result meta.

Pure functions and data classes; nothing here touches a socket or a file.
"""

from .codecs import CONTENT_TYPES, dumps, loads, resolve_content_type
from .message import Envelope, TaskMessage, build_task_message, decode_task_message
from .results import exception_from_dict, exception_to_dict, make_meta

__all__ = [
    "CONTENT_TYPES",
    "Envelope",
    "TaskMessage",
    "build_task_message",
    "decode_task_message",
    "dumps",
    "exception_from_dict",
    "exception_to_dict",
    "loads",
    "make_meta",
    "resolve_content_type",
]
