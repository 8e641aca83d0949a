"""The decision log: one JSON line per request, written to standard error in batches.

Its lines have the shape of every other log line of the sidecar (``time``, ``level``,
``logger`` = ``sidecar.decisions``, ``message`` = ``request``, then the fields), but
they skip the ``logging`` machinery and are not written one by one: the lines of about
``flush_after_s`` go out together, in writes of at most 4 KiB that end at a line's end
(so that the lines of worker processes sharing a pipe never cut into each other). Under
load that is one system call for a dozen requests instead of one each, and no log
record, handler lock or formatter call per request.

A line is not held for long, nor overtaken: the buffer is written ``flush_after_s``
after its first line (later if the event loop is busy), or sooner once ``max_lines``
are waiting; before any other log record of the process goes through the root
handler (see :meth:`DecisionLog.before_other_line`); and when the sidecar stops. A
sidecar killed with SIGKILL loses at most the lines of the last ``flush_after_s``.
"""

import asyncio
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final, TextIO

from sidecar.logs import timestamp

LOGGER_NAME: Final = "sidecar.decisions"
FLUSH_AFTER_S: Final = 0.1
MAX_LINES: Final = 256
ATOMIC_WRITE_BYTES: Final = 4096
"""Linux keeps a write of at most this many bytes to a pipe in one piece (PIPE_BUF).
The worker processes of ``serve --workers`` share one standard error: a longer write of
one could be cut by another's."""


def whole_line_chunks(lines: list[str], limit: int) -> Iterator[str]:
    """``lines``, each ended by a newline, in pieces of at most ``limit`` characters.

    A piece ends at a line's end; a line longer than ``limit`` is a piece of its own.
    The lines are ASCII (``json.dumps`` escapes the rest), so characters are bytes.
    """
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > limit:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line + "\n")
        size += len(line) + 1
    if chunk:
        yield "".join(chunk)


class DecisionLog:
    """Buffers decision lines and writes them to ``stream()`` together.

    ``stream`` is called at each write, so that a replaced ``sys.stderr`` (a test's
    capture, a reopened file) is honoured. The event loop's thread writes lines; any
    thread may flush (another thread's log record does, through the root handler).
    """

    def __init__(
        self,
        level: int,
        stream: Callable[[], TextIO] = lambda: sys.stderr,
        flush_after_s: float = FLUSH_AFTER_S,
        max_lines: int = MAX_LINES,
    ) -> None:
        self._level_name = logging.getLevelName(level).lower()
        self._stream = stream
        self._flush_after_s = flush_after_s
        self._max_lines = max_lines
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._flush_pending_on: asyncio.AbstractEventLoop | None = None
        """The loop whose timer will write the waiting lines; None when none is set."""

    def write(self, fields: dict[str, Any]) -> None:
        """Queue one request's line; write the batch if it is full or no loop runs."""
        entry: dict[str, Any] = {
            "time": timestamp(),
            "level": self._level_name,
            "logger": LOGGER_NAME,
            "message": "request",
        }
        entry.update(fields)
        line = json.dumps(entry, default=str)
        with self._lock:
            self._lines.append(line)
            waiting = len(self._lines)
        if waiting >= self._max_lines:
            self.flush()
        else:
            self._flush_soon()

    def flush(self) -> None:
        """Write every waiting line now (at shutdown, before other lines, when full)."""
        with self._lock:
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                stream = self._stream()
                for chunk in whole_line_chunks(lines, ATOMIC_WRITE_BYTES):
                    stream.write(chunk)
                    stream.flush()
            except (OSError, ValueError):
                pass  # standard error is gone (closed pipe): there is nowhere to say so

    def before_other_line(self, record: logging.LogRecord) -> bool:
        """A ``logging`` filter for the root handler: decision lines go out first.

        Keeps the log in order: a warning written now follows the decision lines of the
        requests that came before it. Lets every record through.
        """
        if self._lines:
            self.flush()
        return True

    def _flush_soon(self) -> None:
        """Set a timer to write the lines, unless one is set on the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_pending_on is not loop:
            self._flush_pending_on = loop
            loop.call_later(self._flush_after_s, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_pending_on = None
        self.flush()
