"""Live job events for watchers: one read per job per change, however many watch it.

Each gateway subscribes to the broker's progress exchange; a note says "job J has events up to
cursor C". The hub keeps one `JobFeed` per watched job: on a note it reads the new events once
(one trip to the store: see feed_reads.py) and wakes every watcher of that job, who take them
from the feed's buffer. Watchers at the same cursor take the same `Batch` object, so whatever a
transport derives from a batch (its encoded bytes) is derived once per batch, not once per
watcher. A watcher that is behind the buffer (history, or a slow consumer) reads the store
directly until it catches up.

A lost note costs only latency: each feed also reads every FALLBACK_READ_SECONDS, and wakes its
watchers after every read (new events or not), so a watcher waits on its feed alone, with no
timer of its own unless its next heartbeat is due sooner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from common.broker import ProgressNote
from common.domain.records import EventRecord
from common.domain.states import JobStatus
from common.lifecycle import Background

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often a feed reads (and wakes its watchers) when no note came.
FALLBACK_READ_SECONDS = 2.0
# Events a feed keeps for watchers that are a little behind; older ones come from the store.
BUFFER = 2_000
FETCH = 1000
# Most events in one batch (one WatchJob response, one SSE write).
BATCH = 500

# (job id, after cursor, limit) -> (events, the job's status and newest cursor, or None if gone)
Reader = Callable[
    [str, int, int], Coroutine[Any, Any, tuple[Sequence[EventRecord], tuple[JobStatus, int] | None]]
]


class Batch:
    """Consecutive events of one job (one or more), as sent to a watcher in one piece.

    Immutable once made. Every watcher at the same cursor receives the same `Batch`, so a
    transport caches what it makes of it (`derive`): the bytes are encoded once however many
    streams send them.
    """

    __slots__ = ("_derived", "events", "first", "last")

    def __init__(self, events: Sequence[EventRecord]) -> None:
        self.events = events
        self.first: int = events[0].seq
        self.last: int = events[-1].seq
        self._derived: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.events)

    def derive(self, key: str, make: Callable[[Sequence[EventRecord]], T]) -> T:
        """`make(events)`, computed on the first call for `key` and remembered."""
        try:
            value: T = self._derived[key]
        except KeyError:
            value = self._derived[key] = make(self.events)
        return value


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
        self.events: list[EventRecord] = []
        self.last_seq = last_seq
        self.status: JobStatus | None = status
        self.wakes = 0  # wake-ups so far (see `next_wake`)
        self._waiters: list[asyncio.Future[None]] = []
        self._read = read
        self._background = background
        self._noted = last_seq
        self._fetch: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._woken = True  # since the last tick
        # Batches handed out since the last read, by the cursor they follow.
        self._batches: dict[int, Batch] = {}

    @property
    def fetched(self) -> int:
        return self.start + len(self.events)

    def batch_after(self, cursor: int) -> Batch | None:
        """The next batch for a watcher at `cursor`: up to BATCH buffered events after it
        (None when there is none yet). Watchers at the same cursor get the same object until
        the feed reads again. `cursor` must not be older than the buffer (`start`)."""
        batch = self._batches.get(cursor)
        if batch is None:
            if cursor >= self.fetched:
                return None
            offset = cursor - self.start
            batch = self._batches[cursor] = Batch(self.events[offset : offset + BATCH])
        return batch

    def next_wake(self, seen: int) -> asyncio.Future[None] | None:
        """A future done at the feed's next wake-up, for a watcher that has seen `seen` of
        them (read `wakes` before looking at the feed, so no wake-up is missed); None when
        there was one since. (Cheaper than an asyncio.Event per feed: one future per waiting
        watcher and nothing to undo after the wake-up; a cancelled waiter is simply skipped.)
        """
        if self.wakes != seen:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def start_reading(self) -> None:
        """Read now (the buffered tail, and events written since the first watcher's read),
        then every FALLBACK_READ_SECONDS until `stop_reading`."""
        self._tick()

    def stop_reading(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    def _tick(self) -> None:
        if not self._woken:  # reads failing or slow: watchers still see time pass
            self._wake()
        self._woken = False
        self.poke()
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(FALLBACK_READ_SECONDS, self._tick)

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
                self._batches = {}
                self.events.extend(events)
                if len(self.events) > BUFFER:
                    dropped = len(self.events) - BUFFER
                    del self.events[:dropped]
                    self.start += dropped
            self.status = job[0] if job else None
            if job is not None:
                self.last_seq = max(self.last_seq, job[1])
            # After every read, new events or not (see the module docstring). Once per read:
            # a watcher that has not run since the last wake-up takes the events of both reads
            # in one batch when it does.
            self._wake()
            if job is None or (len(events) < FETCH and self._noted <= self.fetched):
                return

    def _wake(self) -> None:
        self.wakes += 1
        self._woken = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
            feed.start_reading()
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        try:
            yield feed
        finally:
            self._watchers[job_id] -= 1
            if not self._watchers[job_id]:
                del self._watchers[job_id], self._feeds[job_id]
                feed.stop_reading()

    @property
    def watched_jobs(self) -> int:
        return len(self._feeds)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reading new events failed; watchers will retry", exc_info=task.exception())
