"""Spend-and-fairness fixtures: a broker prefix cleaned up after the test (RabbitMQ is real;
unreachable fails under CI=true, see tests/conftest.py), and a database that is a SQLite file
or a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS
from tests.support.databases import fresh_postgres


@pytest.fixture
async def broker_prefix(amqp_url: str, queue_prefix: str) -> AsyncIterator[str]:
    """A queue prefix whose queues and exchanges are deleted after the test."""
    yield queue_prefix
    await delete_topology(amqp_url, Topology(prefix=queue_prefix, queues=BUILTIN_KINDS.queues))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A SQLite file, or a fresh PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/orchestrator.db"
        return
    async with fresh_postgres(request.getfixturevalue("postgres_url"), "orch_spend") as url:
        yield url
