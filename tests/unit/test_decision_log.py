"""The decision log: the shape of its lines, when batches are written, and their order."""

import asyncio
import io
import json
import logging
from typing import Any

from sidecar.logs import JsonFormatter
from sidecar.telemetry.decision_log import DecisionLog

FIELDS = {"path": "/v1/chat/completions", "tenant": "acme", "cluster": "openai-premium"}


class Captured(io.StringIO):
    """A stream that counts its writes (one per batch is the point of the log)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


def test_a_line_has_the_shape_of_every_other_log_line() -> None:
    stream = Captured()
    DecisionLog(logging.INFO, lambda: stream).write(dict(FIELDS))

    record = logging.LogRecord("sidecar.decisions", logging.INFO, "", 0, "request", (), None)
    for key, value in FIELDS.items():
        setattr(record, key, value)
    other = json.loads(JsonFormatter().format(record))
    [line] = stream.lines()
    assert list(line) == list(other)
    assert {key: line[key] for key in ("level", "logger", "message")} == {
        "level": "info",
        "logger": "sidecar.decisions",
        "message": "request",
    }
    assert {key: line[key] for key in FIELDS} == FIELDS


def test_a_debug_log_says_debug() -> None:
    stream = Captured()
    DecisionLog(logging.DEBUG, lambda: stream).write({})
    assert stream.lines()[0]["level"] == "debug"


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = Captured()
    DecisionLog(logging.INFO, lambda: stream).write(dict(FIELDS))
    assert len(stream.lines()) == 1


async def test_lines_written_in_a_loop_go_out_together_after_the_flush_delay() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=0.0)
    for n in range(5):
        decisions.write({"n": n})
    assert stream.getvalue() == ""

    await asyncio.sleep(0)  # one turn of the loop: the timer set by the first line fires
    await asyncio.sleep(0)
    assert [line["n"] for line in stream.lines()] == [0, 1, 2, 3, 4]
    assert stream.writes == 1


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=3600, max_lines=3)
    for n in range(7):
        decisions.write({"n": n})
    assert [line["n"] for line in stream.lines()] == [0, 1, 2, 3, 4, 5]
    decisions.flush()
    assert [line["n"] for line in stream.lines()] == list(range(7))
    assert stream.writes == 3


async def test_another_log_line_comes_after_the_decision_lines_before_it() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=3600)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(decisions.before_other_line)
    logger = logging.getLogger("test.decision_log.order")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        decisions.write({"n": 1})
        logger.warning("breaker open")
        decisions.write({"n": 2})
        decisions.flush()
    finally:
        logger.removeHandler(handler)
    assert [line.get("n", line["message"]) for line in stream.lines()] == [1, "breaker open", 2]


def test_a_closed_stream_loses_the_lines_but_never_raises() -> None:
    stream = Captured()
    stream.close()
    decisions = DecisionLog(logging.INFO, lambda: stream)
    decisions.write(dict(FIELDS))
    decisions.flush()
