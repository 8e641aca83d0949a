"""Fixtures for the unit tests of the telemetry sinks: a real OTLP receiver."""

from collections.abc import AsyncIterator

import pytest

from tests.fakes.otlp_receiver import OtlpReceiver


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP trace receiver on a free port, stopped after the test."""
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()
