"""A fresh, empty database per stack: a SQLite file in the run's directory, or a new PostgreSQL
database `bench_<hex>` (created on the server of `--postgres-url`, dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import asyncpg
from sqlalchemy.engine import make_url

from bench.console import best_effort

ADMIN_TIMEOUT = 10.0


@asynccontextmanager
async def fresh_database(
    kind: Literal["sqlite", "postgres"], workdir: Path, postgres_url: str
) -> AsyncIterator[str]:
    """Yield the SQLAlchemy URL of a database nobody has used; remove it on exit."""
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite+aiosqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    url = make_url(postgres_url)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
        timeout=ADMIN_TIMEOUT,
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            await best_effort(
                f"drop database {name}",
                lambda: admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
            )
    finally:
        await admin.close()
