"""Remote control: ``app.control`` (client) and the worker's control thread (``server``).

Commands and reply shapes follow Celery's pidbox (celery-wire.md section 5), so
``celery inspect ping`` and Flower can talk to our workers over Redis.
"""

from __future__ import annotations

from .client import Control, Inspect, flatten_reply

__all__ = ["Control", "Inspect", "flatten_reply"]
