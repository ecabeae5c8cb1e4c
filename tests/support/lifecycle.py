"""A harness that runs one task kind's whole lifecycle in-process: the real store (SQLite in
tmp_path), the real group committer, the in-process broker and worker dispatcher, the real
attempt runner, and a fake provider at the kind's port.

`KindCase` says how to drive one kind (its spec and registry, a fresh fake provider, its
handler, a job of N of its tasks); the contract suite (tests/lifecycle) runs the same scenarios
for every case.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common.attempts.kind import KindHandler
from common.attempts.options import AttemptOptions, Registration
from common.attempts.runner import AttemptRunner
from common.broker import ProgressNote
from common.committer import GroupCommitter
from common.domain.changes import ChangeSet, StaleTask
from common.domain.kinds import KindRegistry, TaskKindSpec
from common.domain.messages import MessageKind, Send, TaskMessage
from common.domain.records import EventRecord, JobRecord, TaskRecord
from common.leases import WorkerLease
from common.routing import outgoing_all
from common.service import Infra, open_infra
from common.settings import Settings
from common.store import jobs, leases, queries, sweeps
from common.store.jobs import NewJob
from common.store.records import load_tasks
from common.store.slots import ensure_slots
from common.store.tables import Task
from common.worker import start_consumer

WAIT = 15.0


@dataclass(frozen=True)
class KindCase:
    name: str
    spec: TaskKindSpec
    kinds: KindRegistry
    provider: Callable[[], Any]
    handler: Callable[[GroupCommitter, Any, Path], KindHandler]
    job: Callable[[str, int], NewJob]

    def __str__(self) -> str:
        return self.name


class Twice:
    """Hands every message to the runner twice: the second as a redelivery."""

    def __init__(self, runner: AttemptRunner) -> None:
        self.runner = runner

    async def handle(self, message: TaskMessage, *, redelivered: bool) -> None:
        try:
            await self.runner.handle(message, redelivered=redelivered)
        finally:
            with contextlib.suppress(StaleTask):
                await self.runner.handle(message, redelivered=True)


class Lifecycle:
    def __init__(self, infra: Infra, case: KindCase, fake: Any) -> None:
        self.infra = infra
        self.case = case
        self.fake = fake
        self.committer = infra.committer
        self._changed = asyncio.Event()
        self._jobs = 0
        self.runner: AttemptRunner | None = None

    def on_note(self, _note: ProgressNote) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # Acting ---------------------------------------------------------------------------------

    async def start_job(self, n: int = 1) -> str:
        self._jobs += 1
        job = self.case.job(f"job-{self._jobs}", n)
        await self.committer.exclusive(lambda s, cs: jobs.create_job(s, cs, job))
        await self.publish_queued(job.id)
        return job.id

    async def publish_queued(self, job_id: str) -> None:
        """What the gateway's outbox does after Start*Job and RetryFailed."""
        async with self.infra.db.read() as session:
            tasks = await sweeps.unpublished(session, job_id)
        sends = [m for t in tasks if (m := sweeps.message_for(t, self.case.kinds, reissued=False))]
        await self.infra.broker.publish(outgoing_all(sends, self.case.kinds))

    async def retry_failed(self, job_id: str, max_retries: int = 1) -> list[int]:
        kinds = self.case.kinds
        retried: list[int] = await self.committer.exclusive(
            lambda s, cs: jobs.retry_failed(s, cs, kinds, job_id, max_retries)
        )
        await self.publish_queued(job_id)
        return retried

    async def cancel(self, job_id: str) -> None:
        await self.committer.exclusive(lambda s, cs: jobs.cancel_job(s, cs, job_id))

    async def change(self, record: Callable[[ChangeSet], None]) -> ChangeSet:
        async with self.committer.transaction() as cs:
            record(cs)
        return cs

    async def send(self, task: TaskRecord, message: TaskMessage) -> None:
        await self.committer.send_now(Send(message, task.kind, task.priority))

    async def record_only(self, n: int = 1, job_id: str = "quiet") -> list[TaskRecord]:
        """A job recorded but not published: the test plays the broker (and dead workers)."""
        job = self.case.job(job_id, n)
        await self.committer.exclusive(lambda s, cs: jobs.create_job(s, cs, job))
        return await self.tasks(job_id)

    async def mid_call(self, task: TaskRecord, *, worker: str, deadline: float) -> TaskRecord:
        """`task` as a worker named `worker` leaves it mid-call (in flight, with a deadline)."""
        cs = await self.change(
            lambda cs: cs.start(task, message="go", deadline_at=deadline, worker=worker)
        )
        return cs.after(task)

    async def lease(self, worker: str, until: float) -> None:
        async with self.infra.db.write() as session:
            await leases.renew(session, worker, self.case.spec.queue, now=until - 60, until=until)

    # Looking --------------------------------------------------------------------------------

    async def read(self, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with self.infra.db.read() as session:
            return await work(session)

    async def job(self, job_id: str) -> JobRecord:
        job = await self.read(lambda s: queries.get_job(s, job_id))
        assert job is not None
        return job  # type: ignore[no-any-return]

    async def tasks(self, job_id: str) -> list[TaskRecord]:
        return await self.read(lambda s: load_tasks(s, Task.job_id == job_id))  # type: ignore[no-any-return]

    async def events(self, job_id: str) -> Sequence[EventRecord]:
        return await self.read(lambda s: queries.events_after(s, job_id, 0, 100_000))  # type: ignore[no-any-return]

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
        """Until `check()` holds, looked at again after every progress note."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if await check():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await changed.wait()

    async def finished(self, job_id: str) -> JobRecord:
        async def done() -> bool:
            return (await self.job(job_id)).finished_at is not None

        await self.until(done)
        return await self.job(job_id)

    async def in_status(self, job_id: str, *statuses: str) -> list[TaskRecord]:
        async def reached() -> bool:
            return any(t.status in statuses for t in await self.tasks(job_id))

        await self.until(reached)
        return [t for t in await self.tasks(job_id) if t.status in statuses]


@contextlib.asynccontextmanager
async def lifecycle(
    tmp_path: Path,
    case: KindCase,
    *,
    duplicates: bool = False,
    options: AttemptOptions | None = None,
    **settings: Any,
) -> AsyncIterator[Lifecycle]:
    """The case's kind running in this loop; `duplicates`: every message handled twice."""
    prefix = case.spec.prefix
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/lifecycle.db",
        "amqp_url": "memory://",
        "stale_after": 30,
        "breaker_open_seconds": 0.2,
        f"{prefix}_backoff_initial": 0.01,
        f"{prefix}_backoff_cap": 0.05,
        f"{prefix}_max_retries": 2,
        "max_retry_after": 0.05,
        **settings,
    }
    config = Settings.from_env(kinds=case.kinds, **values)
    fake = case.provider()
    async with open_infra(config) as infra, contextlib.AsyncExitStack() as stack:
        if case.spec.slot_pool is not None:
            async with infra.db.write() as session:
                await ensure_slots(
                    session, case.spec.slot_pool, config.pool_limit(case.spec.slot_pool)
                )
        lease = await stack.enter_async_context(
            WorkerLease(infra.db, case.spec.queue, seconds=config.worker_lease_seconds)
        )
        runner = AttemptRunner(
            infra.committer,
            [
                Registration(
                    case.handler(infra.committer, fake, tmp_path),
                    config.retry_policy(case.spec.name),
                    options or AttemptOptions(call_timeout=2.0, poll_interval=0.01),
                )
            ],
            breakers=infra.breakers,
            lease=lease,
        )
        harness = Lifecycle(infra, case, fake)
        harness.runner = runner
        subscription = await infra.broker.subscribe(harness.on_note)
        try:
            async with start_consumer(
                infra.broker,
                case.spec.queue,
                Twice(runner) if duplicates else runner,
                prefetch=1,
                drain_seconds=2,
            ):
                yield harness
        finally:
            fake.script.release()
            await subscription.close()


def run_message(task: TaskRecord, *, reissued: bool = False) -> TaskMessage:
    return TaskMessage(task.id, task.job_id, MessageKind.RUN, task.attempt, reissued=reissued)
