"""Live job events for watchers: one read per job per change, however many watch it.

Each gateway subscribes to the broker's progress exchange; a note says "job J has events up to
cursor C". The hub keeps one `JobFeed` per watched job: on a note it reads the new events once
and wakes every watcher of that job, who take them from the feed's buffer. A watcher that is
behind the buffer (history, or a slow consumer) reads the store directly until it catches up.
A lost note costs only latency: waiting watchers poke their feed on a short timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from common.broker import ProgressNote
from common.domain.states import JobStatus
from common.lifecycle import Background
from common.store import queries
from common.store.database import Database
from common.store.tables import Event

log = logging.getLogger(__name__)

# How long a watcher waits for a note before asking its feed to look anyway.
FALLBACK_READ_SECONDS = 2.0
# Events a feed keeps for watchers that are a little behind; older ones come from the store.
BUFFER = 2_000
FETCH = 1000

# (job id, after cursor, limit) -> (events, the job's status and newest cursor, or None if gone)
Reader = Callable[
    [str, int, int], Coroutine[Any, Any, tuple[Sequence[Event], tuple[JobStatus, int] | None]]
]


class JobFeed:
    """The tail of one job's events, read once and shared by its watchers.

    The buffer holds the events after `start`, up to `fetched`; a job's cursors have no gaps,
    so it is indexed by cursor directly. `last_seq` and `status` are the newest the feed knows
    (from its reads and from the caller that created it).
    """

    def __init__(
        self,
        job_id: str,
        last_seq: int,
        status: JobStatus,
        owner: str,
        *,
        read: Reader,
        background: Background,
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.start = max(0, last_seq - BUFFER)
        self.events: list[Event] = []
        self.last_seq = last_seq
        self.status: JobStatus | None = status
        self.changed = asyncio.Event()
        self._read = read
        self._background = background
        self._noted = last_seq
        self._fetch: asyncio.Task[None] | None = None

    @property
    def fetched(self) -> int:
        return self.start + len(self.events)

    def after(self, cursor: int) -> list[Event] | None:
        """Buffered events after `cursor`; None when `cursor` is older than the buffer."""
        if cursor < self.start:
            return None
        return self.events[cursor - self.start :]

    def note(self, cursor: int) -> None:
        self._noted = max(self._noted, cursor)
        if self._noted > self.fetched:
            self.poke()

    def poke(self) -> None:
        """Read whatever is new (at most one read runs at a time)."""
        if self._fetch is None or self._fetch.done():
            self._fetch = self._background.spawn(self._catch_up(), name=f"feed-{self.job_id}")
            self._fetch.add_done_callback(_log_failure)

    async def _catch_up(self) -> None:
        while True:
            # A background task: it ends on its own, the gateway awaits it before closing.
            events, job = await self._read(self.job_id, self.fetched, FETCH)
            if events:
                self.events.extend(events)
                if len(self.events) > BUFFER:
                    dropped = len(self.events) - BUFFER
                    del self.events[:dropped]
                    self.start += dropped
            self.status = job[0] if job else None
            if job is not None:
                self.last_seq = max(self.last_seq, job[1])
            self._wake()
            if job is None or (len(events) < FETCH and self._noted <= self.fetched):
                return

    def _wake(self) -> None:
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


async def read_events(
    db: Database, job_id: str, cursor: int, limit: int
) -> tuple[Sequence[Event], tuple[JobStatus, int] | None]:
    """Events after `cursor`, and the job's (status, newest cursor); None if it is gone."""
    async with db.read() as session:
        events = await queries.events_after(session, job_id, cursor, limit)
        job = await queries.get_job(session, job_id)
    return events, None if job is None else (JobStatus(job.status), job.last_seq)


class ProgressHub:
    def __init__(self, read: Reader, background: Background) -> None:
        self.read = read
        self.background = background
        self._feeds: dict[str, JobFeed] = {}
        self._watchers: dict[str, int] = {}

    def on_note(self, note: ProgressNote) -> None:
        """Broker callback: a job has new events."""
        feed = self._feeds.get(note.job_id)
        if feed is not None:
            feed.note(note.cursor)

    def feed(self, job_id: str) -> JobFeed | None:
        return self._feeds.get(job_id)

    @contextmanager
    def watching(
        self, job_id: str, last_seq: int, status: JobStatus, owner: str
    ) -> Iterator[JobFeed]:
        """The job's feed for the duration of a watch; `last_seq`/`status`/`owner` as the
        caller read them (used when this watcher is the first)."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = JobFeed(
                job_id, last_seq, status, owner, read=self.read, background=self.background
            )
            feed.poke()  # the buffered tail, and events written since the caller's read
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        try:
            yield feed
        finally:
            self._watchers[job_id] -= 1
            if not self._watchers[job_id]:
                del self._watchers[job_id], self._feeds[job_id]

    @property
    def watched_jobs(self) -> int:
        return len(self._feeds)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reading new events failed; watchers will retry", exc_info=task.exception())
