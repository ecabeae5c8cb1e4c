"""Publishing a job's tasks after the RPC returned, the sweeper, and retention clean-up.

`Start*Job` and `RetryFailed` commit the job and its QUEUED tasks, hand the job id to
`Outbox.publish_job`, and answer at once; the outbox publishes the task messages in confirmed
batches and clears each task's deadline once RabbitMQ holds its message. If the gateway dies
first, the deadline passes and the sweeper (here too) publishes them: nothing accepted is lost.

The sweeper also re-issues any task message presumed lost (see common.store.sweeps), hands out
provider slots nobody handed out, and deletes finished jobs past their retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from common import tracing
from common.domain.changes import ChangeSet
from common.routing import outgoing_all
from common.service import Infra
from common.store import leases, sweeps

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 1000


class Outbox:
    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.committer = infra.committer
        self.kinds = infra.kinds
        self._jobs: list[tuple[str, str | None]] = []
        self._kick = asyncio.Event()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def _cleanup_every(self) -> float:
        """Often enough that jobs go soon after their retention, at most once a minute."""
        settings = self.infra.settings
        return min(60.0, max(settings.sweep_interval, settings.job_retention / 4))

    def publish_job(self, job_id: str) -> None:
        """Publish `job_id`'s unpublished tasks soon (the caller has committed them); their
        messages continue the caller's trace."""
        self._jobs.append((job_id, tracing.current()))
        self._idle.clear()
        self._kick.set()

    async def wait_idle(self) -> None:
        """Until every job handed over so far is published (for tests)."""
        await self._idle.wait()

    def stop(self) -> None:
        """Ask `run` to finish: it publishes what it was handed, then returns."""
        self._stopping.set()
        self._kick.set()

    async def run(self) -> None:
        """Publish handed-over jobs as they come; sweep every `sweep_interval` seconds.

        Runs until `stop()`; never cancelled mid-pass, so no database call is cut halfway.
        """
        settings = self.infra.settings
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        next_cleanup = loop.time()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self._publish_handed_over()
                if self._stopping.is_set():
                    break
                if loop.time() >= next_sweep:
                    await self.sweep()
                    next_sweep = loop.time() + settings.sweep_interval
                if loop.time() >= next_cleanup:
                    await self.delete_expired()
                    next_cleanup = loop.time() + self._cleanup_every
            except Exception:
                # Database or broker trouble: the deadlines keep everything recoverable; retry.
                log.exception("outbox pass failed; retrying in %.0fs", settings.sweep_interval)
                next_sweep = loop.time() + settings.sweep_interval
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.sweep_interval):
                        await self._stopping.wait()

    async def _publish_handed_over(self) -> None:
        while self._jobs:
            await self._publish(*self._jobs[0])
            self._jobs.pop(0)
        self._idle.set()

    async def _publish(self, job_id: str, trace: str | None = None) -> None:
        async with self.infra.db.read() as session:
            tasks = await sweeps.unpublished(session, job_id)
        for start in range(0, len(tasks), PUBLISH_CHUNK):
            chunk = tasks[start : start + PUBLISH_CHUNK]
            sends = [
                replace(m, trace=trace)
                for t in chunk
                if (m := sweeps.message_for(t, self.kinds, reissued=False))
            ]
            await self.infra.broker.publish(outgoing_all(sends, self.kinds))
            await self.committer.exclusive(
                partial(sweeps.mark_published, task_ids=[t.id for t in chunk])
            )
        if tasks:
            log.info("published %d tasks of job %s", len(tasks), job_id)

    async def sweep(self) -> int:
        """Re-issue overdue task messages and hand out free provider slots; returns re-issues."""
        reissued = 0
        while True:
            claimed = await self.committer.exclusive(
                partial(sweeps.claim_overdue, kinds=self.kinds)
            )
            reissued += claimed
            if claimed < sweeps.CLAIM_LIMIT:
                break
        if reissued:
            log.warning("sweeper re-issued %d task messages presumed lost", reissued)
        expired = await self.committer.exclusive(sweeps.expire_past_deadline)
        if expired:
            log.info("%d tasks not started before their job's deadline", expired)

        async def rebalance(_session: AsyncSession, cs: ChangeSet) -> None:
            # Recount held slots and hand out free ones: a safety net, should nothing else.
            cs.rebalance.update(self.kinds.pools)

        await self.committer.exclusive(rebalance)
        return reissued

    async def delete_expired(self) -> int:
        cutoff = self.committer.clock() - self.infra.settings.job_retention
        deleted = 0
        while True:
            n = await self.committer.exclusive(
                lambda session, cs: sweeps.delete_finished_before(session, cs, cutoff)
            )
            deleted += n
            if n == 0:
                break
        if deleted:
            log.info("deleted %d finished jobs older than the retention", deleted)
        await self.committer.exclusive(
            lambda session, cs: leases.expire_older_than(session, cutoff)
        )
        return deleted
