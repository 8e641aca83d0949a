"""The decision log: the shape of its lines, when batches are written, and their order."""

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from sidecar import serve
from sidecar.logs import JsonFormatter
from sidecar.telemetry.decision_log import DecisionLog, whole_line_chunks

FIELDS = {"path": "/v1/chat/completions", "tenant": "acme", "cluster": "openai-premium"}


class Captured(io.StringIO):
    """A stream that counts its writes (one per batch is the point of the log)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.longest_write = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.longest_write = max(self.longest_write, len(text))
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


async def test_each_quiet_spell_gets_its_own_timer() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=0.0)
    decisions.write({"n": 1})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    decisions.write({"n": 2})
    assert [line["n"] for line in stream.lines()] == [1]

    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [line["n"] for line in stream.lines()] == [1, 2]
    assert stream.writes == 2


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


def test_a_batch_goes_out_in_pieces_that_a_pipe_keeps_whole() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=3600)
    for n in range(200):
        decisions.write({"n": n, "padding": "x" * 200})
    decisions.flush()

    assert [line["n"] for line in stream.lines()] == list(range(200))
    assert stream.writes > 1
    assert stream.longest_write <= 4096


def test_pieces_end_at_line_ends_and_a_long_line_stands_alone() -> None:
    lines = ["a" * 10, "b" * 10, "c" * 30, "d" * 5]
    assert list(whole_line_chunks(lines, 25)) == [
        "a" * 10 + "\n" + "b" * 10 + "\n",
        "c" * 30 + "\n",
        "d" * 5 + "\n",
    ]
    assert list(whole_line_chunks([], 25)) == []


def test_a_closed_stream_loses_the_lines_but_never_raises() -> None:
    stream = Captured()
    stream.close()
    decisions = DecisionLog(logging.INFO, lambda: stream)
    decisions.write(dict(FIELDS))
    decisions.flush()


async def test_serving_keeps_decision_lines_ahead_and_writes_them_at_the_end() -> None:
    stream = Captured()
    decisions = DecisionLog(logging.INFO, lambda: stream, flush_after_s=3600)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with serve._decision_lines_first(decisions):
            decisions.write({"n": 1})
            logging.getLogger("sidecar.test").warning("in between")
            decisions.write({"n": 2})
            assert len(stream.lines()) == 2
        assert [line.get("n", line["message"]) for line in stream.lines()] == [
            1,
            "in between",
            2,
        ]
        assert decisions.before_other_line not in handler.filters
    finally:
        root.removeHandler(handler)


def test_a_decision_log_below_the_log_level_is_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    assert serve._decision_log("debug") is None
    assert "start with --log-level debug" in caplog.text
    assert serve._decision_log("off") is None
    assert isinstance(serve._decision_log("info"), DecisionLog)
