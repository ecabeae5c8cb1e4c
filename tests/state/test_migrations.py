"""Schema migrations keep what the previous schema held."""

from __future__ import annotations

import time

from alembic import command
from sqlalchemy import Connection, text

from common.store.database import open_database
from common.store.migrate import alembic_config
from common.store.records import load_tasks
from common.store.tables import Task


def _to(revision: str):  # type: ignore[no-untyped-def]
    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    return upgrade


async def test_fal_urls_become_the_provider_handle(db_url: str) -> None:
    now = time.time()
    async with open_database(db_url, migrate=False) as db:
        async with db.write_engine.begin() as conn:
            await conn.run_sync(_to("0001"))
            await conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, status, priority, request_hash, params, meta,"
                    " retry_history, total_tasks, open_tasks, last_seq, cancel_requested,"
                    " message, warning, created_at, updated_at) VALUES ('j', 'video', 'running',"
                    " 2, 'h', '{}', '{}', '[]', 2, 1, 0, false, '', '', :now, :now)"
                ),
                {"now": now},
            )
            for index, url in ((1, "https://q/r1"), (2, None)):
                await conn.execute(
                    text(
                        'INSERT INTO tasks (job_id, "index", kind, status, priority, attempt,'
                        " max_attempts, payload, request_id, status_url, response_url,"
                        " cancel_url, last_error, error_class, recoverable, holds_slot,"
                        " poll_chain, updated_at) VALUES ('j', :index, 'video.segment',"
                        " 'running', 2, 1, 4, '{}', :rid, :url, :url, :url, '', '', false,"
                        " false, 1, :now)"
                    ),
                    {"index": index, "rid": url and "r1", "url": url, "now": now},
                )
        await db.migrate()  # to head
        async with db.read() as session:
            first, second = await load_tasks(session, Task.job_id == "j")
    assert first.request_id == "r1"
    assert first.handle == {
        "status_url": "https://q/r1",
        "response_url": "https://q/r1",
        "cancel_url": "https://q/r1",
    }
    assert second.handle is None and second.request_id is None
