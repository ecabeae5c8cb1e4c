"""End-to-end fixtures: the simulator in the test's loop, services in real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from common.broker import Topology, delete_topology
from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.support.stack import FAL_KEY, OPENAI_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    """The provider simulator, requiring the test keys, with short generations."""
    config = SimulatorConfig(latency=0.3, hang_seconds=4, fal_key=FAL_KEY, openai_key=OPENAI_KEY)
    async with run_simulator(config) as handle:
        yield handle


@pytest.fixture
async def broker_prefix(amqp_url: str, queue_prefix: str) -> AsyncIterator[str]:
    """A queue prefix whose queues and exchanges are deleted after the test."""
    yield queue_prefix
    await delete_topology(amqp_url, Topology(prefix=queue_prefix))
