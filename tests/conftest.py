"""Fixtures shared by every test: real services when they are cheap, failing loudly in CI.

A test that needs RabbitMQ or PostgreSQL skips when the service is unreachable on a developer
machine, but fails when CI=true: CI must never pass by skipping.
"""

from __future__ import annotations

import os

# Tests start service processes while gRPC calls run in this one; with gRPC's fork handlers on,
# a child forked at such a moment can die of SIGSEGV before it execs (set before grpc loads).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.support.stack import FAL_KEY, OPENAI_KEY

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(service: str, url: str, default_port: int) -> str:
    if _reachable(url, default_port):
        return url
    message = f"{service} is unreachable at {urlsplit(url).netloc}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{message} (CI=true: tests that need it must not skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a real RabbitMQ (TEST_AMQP_URL, default the local one)."""
    return _require("RabbitMQ", os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP_URL), 5672)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real PostgreSQL database (TEST_POSTGRES_URL, default the local `test`)."""
    return _require("PostgreSQL", os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL), 5432)


@pytest.fixture
def queue_prefix() -> str:
    """A queue-name prefix no other test uses, so tests can share one broker."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    """The provider simulator in the test's loop, requiring the test keys, short generations."""
    config = SimulatorConfig(latency=0.3, hang_seconds=4, fal_key=FAL_KEY, openai_key=OPENAI_KEY)
    async with run_simulator(config) as handle:
        yield handle
