"""The state store against SQLite (a file in tmp_path) and the local PostgreSQL (a fresh database
per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.store.database import Database, open_database
from tests.support.databases import fresh_postgres


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database, SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/state.db"
        return
    async with fresh_postgres(request.getfixturevalue("postgres_url"), "orch_test") as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    async with open_database(db_url) as database:
        yield database
