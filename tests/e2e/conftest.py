"""End-to-end fixtures: services in real processes on a real RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS

pytestmark = pytest.mark.e2e


@pytest.fixture
async def broker_prefix(amqp_url: str, queue_prefix: str) -> AsyncIterator[str]:
    """A queue prefix whose queues and exchanges are deleted after the test."""
    yield queue_prefix
    await delete_topology(amqp_url, Topology(prefix=queue_prefix, queues=BUILTIN_KINDS.queues))
