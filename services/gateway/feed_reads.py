"""How a job feed reads new events: in one trip to the store.

A feed reads after every note, while a thousand watchers may be writing to their streams on the
same event loop. Through the async SQLite driver a read is a dozen thread round trips (begin,
each statement's cursor, execute, fetch and close, commit, the pool's reset), and each one waits
for its turn on that busy loop: measured, the read of a few events then took 10-100 ms and more,
behind the fan-out. So on SQLite the feed reads through a synchronous engine of its own, on one
thread of its own: the whole read (both statements, in one snapshot) is a single hand-off to
that thread and a single wake-up back (common.store.threaded). Other databases (and an in-memory
SQLite, which only its own connection sees) read through the ordinary async session.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from sqlalchemy import Engine

from common.domain.records import EventRecord
from common.domain.states import JobStatus
from common.store import queries
from common.store.database import Database, tune_sqlite
from common.store.threaded import SqliteThread
from services.gateway.progress import Reader

Head = tuple[JobStatus, int] | None
# One read-only connection whose transactions begin with BEGIN (both statements of a read see
# one snapshot).
_READ_ONLY = partial(tune_sqlite, immediate=False, read_only=True)


async def read_events(
    db: Database, job_id: str, cursor: int, limit: int
) -> tuple[Sequence[EventRecord], Head]:
    """Events after `cursor`, and the job's (status, newest cursor); None if it is gone."""
    async with db.read() as session:
        events = await queries.events_after(session, job_id, cursor, limit)
        job = await queries.get_job(session, job_id)
    return events, None if job is None else (JobStatus(job.status), job.last_seq)


class FeedReads:
    """The feeds' reader for one database (`read` is a `progress.Reader`); `close` at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._thread = SqliteThread(db.url, _READ_ONLY, "feed-reads") if db.on_disk else None

    @property
    def read(self) -> Reader:
        return self._read_in_thread if self._thread is not None else self._read_async

    async def _read_async(
        self, job_id: str, cursor: int, limit: int
    ) -> tuple[Sequence[EventRecord], Head]:
        return await read_events(self.db, job_id, cursor, limit)

    async def _read_in_thread(
        self, job_id: str, cursor: int, limit: int
    ) -> tuple[Sequence[EventRecord], Head]:
        assert self._thread is not None
        engine = self._thread.engine
        return await self._thread.run(lambda: _read_now(engine, job_id, cursor, limit))

    async def close(self) -> None:
        if self._thread is not None:
            await self._thread.close()


def _read_now(
    engine: Engine, job_id: str, cursor: int, limit: int
) -> tuple[Sequence[EventRecord], Head]:
    # Plain rows on a connection: no session, no ORM objects (a read per note adds up).
    with engine.connect() as connection, connection.begin():
        params = {"job_id": job_id, "cursor": cursor, "limit": limit}
        events = [EventRecord(*row) for row in connection.execute(queries.EVENTS_AFTER, params)]
        job = connection.execute(queries.JOB_HEAD, {"job_id": job_id}).first()
    return events, None if job is None else (JobStatus(job.status), job.last_seq)
