"""Structured JSON logs: one object per line on standard error.

Fields passed with ``extra=`` are included as top-level keys. Nothing here may log
credentials; callers pass ids and names only.
"""

import json
import logging
import sys
import time
from typing import Any, ClassVar


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message and extras."""

    _STANDARD: ClassVar[frozenset[str]] = frozenset(
        logging.LogRecord("", 0, "", 0, "", (), None).__dict__
    ) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in record.__dict__.items() if key not in self._STANDARD
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_second_prefix: tuple[int, str] = (0, "")
"""The last whole second formatted, and its text: lines of one second share it."""


def timestamp(created: float | None = None) -> str:
    """``created`` (now if None) as ISO 8601 in UTC with milliseconds.

    For example ``2026-11-22T17:20:08.123+00:00``. Formatted by hand from
    ``time.gmtime``, and the seconds part once per second: ``datetime.isoformat``
    costs several times more, on every decision log line.
    """
    global _second_prefix
    if created is None:
        created = time.time()
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    cached_second, prefix = _second_prefix
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_prefix = (seconds, prefix)
    return f"{prefix}.{millis:03d}+00:00"


def configure_logging(level: str) -> None:
    """Send every log record to standard error as JSON, at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
