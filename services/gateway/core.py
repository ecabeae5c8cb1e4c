"""What the gateway does, independent of gRPC or HTTP: both edges call `JobsCore`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.auth import ANONYMOUS, Caller, Role
from common.domain.changes import ChangeSet
from common.domain.kinds import STORY_SET, VIDEO_SEGMENT
from common.domain.records import JobRecord
from common.domain.states import JobStatus
from common.errors import InvalidArgument, NotFound
from common.service import Infra
from common.store import jobs as job_store
from common.store import queries
from common.store.jobs import NewJob
from services.gateway.fields import UrlPolicy, check_job_id
from services.gateway.outbox import Outbox
from services.gateway.progress import BATCH, FALLBACK_READ_SECONDS, Batch, ProgressHub
from services.gateway.requests import (
    MAX_RETRIES,
    Limits,
    StoryJobRequest,
    VideoJobRequest,
    plan_story_job,
    plan_video_job,
)
from services.gateway.views import JobView, load_view, load_views

log = logging.getLogger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 500
EVENT_BATCH = BATCH
DEFAULT_HEARTBEAT = 15


@dataclass(frozen=True)
class Heartbeat:
    cursor: int
    at: float


@dataclass(frozen=True)
class RetryOutcome:
    retried: list[int]
    message: str
    view: JobView


MAX_PAGE_TOKEN = 256
MAX_CURSOR = 2**53  # JSON-safe integer range


class JobsCore:
    def __init__(
        self,
        infra: Infra,
        outbox: Outbox,
        hub: ProgressHub,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        s = infra.settings
        self.infra = infra
        self.outbox = outbox
        self.hub = hub
        self.clock = clock
        self.new_id = new_id
        self.committer = infra.committer
        self.kinds = infra.kinds
        self.limits = Limits(
            max_video_segments=s.max_video_segments,
            max_story_segments=s.max_story_segments,
            video_max_retries=s.max_retries(VIDEO_SEGMENT.name),
            story_max_retries=s.max_retries(STORY_SET.name),
            default_video_model=s.fal_model,
            default_story_model=s.openai_model,
            urls=UrlPolicy.trusting(
                [s.fal_queue_url, s.openai_base_url], allow_private=s.allow_private_urls
            ),
            fal_models=s.allowed_models("fal"),
            openai_models=s.allowed_models("openai"),
            max_job_concurrency=s.max_job_concurrency,
            max_pool=max([s.pool_limit(p) for p in infra.kinds.pools] or [10_000]),
        )

    # Start ------------------------------------------------------------------------------

    async def start_video(
        self, request: VideoJobRequest, caller: Caller = ANONYMOUS
    ) -> tuple[JobView, bool]:
        caller.require(Role.SUBMIT, "starting a job")
        plan = plan_video_job(
            self.new_id(), request, self.limits, owner=caller.name, now=self.clock()
        )
        return await self._start(plan, caller)

    async def start_story(
        self, request: StoryJobRequest, caller: Caller = ANONYMOUS
    ) -> tuple[JobView, bool]:
        caller.require(Role.SUBMIT, "starting a job")
        root = str(self.infra.settings.output_root)
        plan = plan_story_job(
            self.new_id(), request, self.limits, root, owner=caller.name, now=self.clock()
        )
        return await self._start(plan, caller)

    async def _start(self, plan: NewJob, caller: Caller) -> tuple[JobView, bool]:
        def create(session: AsyncSession, cs: ChangeSet) -> Awaitable[tuple[str, bool]]:
            return job_store.create_job(session, cs, plan)

        try:
            job_id, created = await self.committer.exclusive(create)
        except IntegrityError:
            # The same idempotency key raced us to the insert (another gateway): it won.
            if not plan.idempotency_key:
                raise
            job_id, created = await self.committer.exclusive(create)
        if created:
            self.outbox.publish_job(job_id)
            log.info(
                "job %s created (%s, %d tasks)",
                job_id,
                plan.kind,
                len(plan.tasks),
                extra={"event": "start", "job_id": job_id, "owner": plan.owner, **plan.params},
            )
        return await self.get(job_id, caller, with_tasks=False), created

    # Read -------------------------------------------------------------------------------

    async def get(
        self, job_id: str, caller: Caller = ANONYMOUS, *, with_tasks: bool = True
    ) -> JobView:
        check_job_id(job_id)
        # Shielded like every read of a caller that may hang up: see _read.
        return await self.hub.background.shield(self._load(job_id, caller, with_tasks))

    async def _load(self, job_id: str, caller: Caller, with_tasks: bool) -> JobView:
        async with self.infra.db.read() as session:
            view = await load_view(session, job_id, self.kinds, with_tasks=with_tasks)
        if not caller.owns(view.job.owner):
            raise NotFound(f"job_id: no job {job_id!r}")  # another owner's job does not exist
        return view

    async def _owned(self, job_id: str, caller: Caller) -> None:
        """NotFound unless `caller` may see the job (read without its tasks)."""
        await self.get(job_id, caller, with_tasks=False)

    async def list(
        self,
        *,
        caller: Caller = ANONYMOUS,
        page_size: int = 0,
        page_token: str = "",
        kind: str | None = None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[JobView], str]:
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE}, got {size}")
        before = _decode_token(page_token) if page_token else None
        owner = None if caller.sees_everything else caller.name
        async with self.infra.db.read() as session:
            found = await queries.list_jobs(
                session, limit=size + 1, kind=kind, statuses=statuses, before=before, owner=owner
            )
            views = await load_views(session, found[:size], self.kinds)
        token = _encode_token(found[size - 1]) if len(found) > size else ""
        return views, token

    # Retry and cancel -------------------------------------------------------------------

    async def retry_failed(
        self,
        job_id: str,
        max_retries: int = 0,
        caller: Caller = ANONYMOUS,
        *,
        indices: Sequence[int] = (),
        regenerate: bool = False,
    ) -> RetryOutcome:
        check_job_id(job_id)
        if not 0 <= max_retries <= MAX_RETRIES:
            raise InvalidArgument(
                "max_retries", f"must be between 0 and {MAX_RETRIES}, got {max_retries}"
            )
        caller.require(Role.SUBMIT, "RetryFailed")
        view = await self.get(job_id, caller, with_tasks=False)
        if len(indices) > view.total_tasks:
            raise InvalidArgument(
                "task_indices", f"at most {view.total_tasks} (the job's tasks), got {len(indices)}"
            )
        if regenerate and not indices:
            raise InvalidArgument("regenerate", "name the tasks to run again in task_indices")
        retries = max_retries or (
            self.limits.story_max_retries if view.is_story else self.limits.video_max_retries
        )
        retried = await self.committer.exclusive(
            lambda session, cs: job_store.retry_failed(
                session, cs, self.kinds, job_id, retries, indices=indices, regenerate=regenerate
            )
        )
        if retried:
            self.outbox.publish_job(job_id)
            message = f"re-queued {len(retried)} tasks: {', '.join(map(str, retried))}"
        else:
            message = f"nothing to retry: all {view.total_tasks} tasks succeeded"
        view = await self.get(job_id, caller, with_tasks=False)
        return RetryOutcome(retried, message, view)

    async def cancel(self, job_id: str, caller: Caller = ANONYMOUS) -> JobView:
        check_job_id(job_id)
        caller.require(Role.SUBMIT, "CancelJob")
        await self._owned(job_id, caller)
        await self.committer.exclusive(
            lambda session, cs: job_store.cancel_job(session, cs, job_id)
        )
        return await self.get(job_id, caller)

    async def wait_finished(
        self, job_id: str, max_wait: float, caller: Caller = ANONYMOUS
    ) -> JobView:
        """The job once it reached a terminal status, or as it is after `max_wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        view = await self.get(job_id, caller, with_tasks=False)
        with self.hub.watching(job_id, view.job.last_seq, view.status, view.job.owner) as feed:
            while (remaining := deadline - loop.time()) > 0:
                seen = feed.wakes
                if feed.status is None or feed.status.terminal:
                    break
                wakeup = feed.next_wake(seen)
                if wakeup is None:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await wakeup  # at least every FALLBACK_READ_SECONDS
        return await self.get(job_id, caller)

    # Watch ------------------------------------------------------------------------------

    async def watch(
        self,
        job_id: str,
        *,
        caller: Caller = ANONYMOUS,
        after: int = 0,
        follow: bool = False,
        heartbeat: int = 0,
    ) -> AsyncIterator[Batch | Heartbeat]:
        """The job's events after `after`, then live ones, in batches; heartbeats while idle.

        Ends once the job is finished and every event up to its terminal one was sent, unless
        `follow`. Validates everything before yielding anything.
        """
        check_job_id(job_id)
        interval = heartbeat or DEFAULT_HEARTBEAT
        if not 1 <= interval <= 300:
            raise InvalidArgument("heartbeat_seconds", f"must be between 1 and 300, got {interval}")
        if not 0 <= after <= MAX_CURSOR:
            raise InvalidArgument("after_cursor", f"must be between 0 and {MAX_CURSOR}")
        feed = self.hub.feed(job_id)
        if (
            feed is not None
            and feed.status is not None
            and after <= feed.last_seq
            and caller.owns(feed.owner)
        ):
            # Watched already: no read needed.
            last_seq, status, owner = feed.last_seq, feed.status, feed.owner
        else:  # (a feed may lag a cursor another gateway handed out: ask the store)
            async with self.infra.db.read() as session:
                job = await queries.get_job(session, job_id)
            if job is None or not caller.owns(job.owner):
                raise NotFound(f"job_id: no job {job_id!r}")
            last_seq, status, owner = job.last_seq, JobStatus(job.status), job.owner
        if after > last_seq:
            raise InvalidArgument(
                "after_cursor", f"{after} is beyond the job's newest event (cursor {last_seq})"
            )
        return self._stream(
            job_id, (last_seq, status, owner), cursor=after, follow=follow, interval=interval
        )

    async def _stream(
        self,
        job_id: str,
        head: tuple[int, JobStatus, str],
        *,
        cursor: int,
        follow: bool,
        interval: int,
    ) -> AsyncIterator[Batch | Heartbeat]:
        loop = asyncio.get_running_loop()
        with self.hub.watching(job_id, *head) as feed:
            next_beat = loop.time() + interval
            while True:
                seen = feed.wakes  # taken before reading, so no wake-up is missed
                if cursor < feed.start:  # behind the live buffer: history from the store
                    # Shielded: a client hanging up mid-read must not cut the database call.
                    read = self.hub.read(job_id, cursor, EVENT_BATCH)
                    history, _ = await self.hub.background.shield(read)
                    batch = Batch(history) if history else None
                else:  # shared with every watcher at this cursor
                    batch = feed.batch_after(cursor)
                if batch is not None:
                    cursor = batch.last
                    yield batch
                    next_beat = loop.time() + interval
                    continue
                if feed.status is None:
                    return  # the job was deleted (retention)
                if not follow and feed.status.terminal and cursor >= feed.last_seq:
                    return
                wakeup = feed.next_wake(seen)
                if wakeup is None:
                    continue
                until_beat = next_beat - loop.time()
                if until_beat > FALLBACK_READ_SECONDS:
                    # The feed wakes its watchers at least that often: no timer needed.
                    await wakeup
                    continue
                try:
                    async with asyncio.timeout(max(0.0, until_beat)):
                        await wakeup
                except TimeoutError:
                    yield Heartbeat(cursor=cursor, at=self.clock())
                    next_beat = loop.time() + interval


def _encode_token(job: JobRecord) -> str:
    raw = json.dumps([job.created_at, job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[float, str]:
    """A token `_encode_token` made, or InvalidArgument (whatever the bytes)."""
    bad = InvalidArgument("page_token", "not a token from ListJobs")
    if len(token) > MAX_PAGE_TOKEN:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw, parse_constant=_refuse)
    except (binascii.Error, ValueError, RecursionError):
        raise bad from None
    match decoded:
        case [float() | int() as created_at, str() as job_id] if not isinstance(created_at, bool):
            if math.isfinite(created_at) and abs(created_at) < MAX_CURSOR and len(job_id) <= 64:
                return float(created_at), job_id
    raise bad


def _refuse(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")
