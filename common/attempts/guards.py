"""Checks before an attempt starts: a task caught mid-call (its worker lost, or a webhook that
may still name its request), a job deadline a new attempt cannot meet, and a result an
identical task already paid for."""

from __future__ import annotations

import logging
from dataclasses import replace

from common import metrics
from common.attempts.kind import Work
from common.attempts.outcomes import Outcomes
from common.attempts.steps import progress
from common.domain.changes import Failure, StaleTask
from common.domain.messages import Send
from common.domain.states import TaskStatus
from common.resilience import ErrorClass
from common.store import queries

log = logging.getLogger(__name__)

# Looking again at a worker's lease a little after it would have run out.
LEASE_MARGIN = 0.5
# A delayed message may come back this early (the broker's delay tolerance).
ADOPT_EARLY = 0.5
# A provider calls back when the generation ends: an interrupted submit waits for its webhook
# this many times the model's usual attempt, plus the margin, at most (see `adopt_window`).
ADOPT_RUN_TIMES = 3.0
ADOPT_MARGIN = 10.0


def adopt_window(configured: float, expected: float) -> float:
    """How long a task whose submit was cut off waits for the provider's webhook naming the
    request: the configured window, or less once the model's attempts are known (`expected`
    seconds on average, 0 when unknown) to end well within it. A submit the provider never
    received never calls back, and waiting the whole window for it (300 s by default, sized for
    slow models) stalled every such task of a fast model."""
    if expected <= 0:
        return configured
    return min(configured, ADOPT_RUN_TIMES * expected + ADOPT_MARGIN)


class Guards(Outcomes):
    """What may stop a RUN message before any provider call."""

    async def _worker_lost(self, redelivered: bool) -> bool:
        """The task is mid-call: True when its worker is gone and the call must be made again,
        False when this message was put off to look again later; StaleTask when the call is
        another delivery's (or this worker's) work in progress."""
        message, task, lease = self.message, self.task, self.runner.lease
        if message.reissued or self._overdue():
            return True  # silent past its deadline: the sweeper's (or our) verdict
        if not (redelivered or message.recheck) or lease is None:
            raise StaleTask("another delivery of this message is working on it")
        if task.worker == lease.id:
            raise StaleTask("this worker is making that call")
        remaining = await lease.remaining(task.worker)
        if remaining <= 0:
            return True  # its worker died: take over now
        # Its worker still holds its lease (only its connection dropped, say): look again
        # once that lease would have run out, without a redelivery to tell us so.
        again = Send(replace(message, recheck=True), task.kind, task.priority)
        await self.committer.send_now(replace(again, delay=remaining + LEASE_MARGIN))
        return False

    async def _awaiting_webhook(self) -> bool:
        """An interrupted submit the provider may have accepted: while the adoption window
        lasts, put the message off until it ends (True); a webhook naming the request adopts it
        meanwhile and this message then finds the task RUNNING."""
        task, window = self.task, self.options.adopt_window
        if not (self.spec.polled and window > 0):
            return False
        work = await self._work(task)
        window = adopt_window(window, await self.runner.durations.expected(self._budget(work)))
        until = (task.started_at or task.updated_at) + window
        wait = until - self.committer.clock()
        if wait <= ADOPT_EARLY:
            return False
        text = (
            f"attempt {task.attempt}'s submit was cut off; waiting up to {wait:.0f}s for"
            f" {self.spec.provider}'s webhook to name its request before submitting again"
        )
        async with self.committer.transaction() as cs:
            cs.note(
                task,
                progress(task, text, wait=round(wait, 3)),
                deadline_at=until + cs.timings.stale_after,
            )
            cs.send(task, replace(self.message, recheck=True, reissued=False), delay=wait)
        log.info(text, extra={"event": "wait", "retry_in": round(wait, 3)})
        return True

    def _lost_text(self) -> str:
        task = self.task
        if self.spec.polled:
            return (
                f"the request id of attempt {task.attempt} was lost (the worker stopped"
                " mid-submit); submitting again"
            )
        return (
            f"the worker running {self.spec.noun} {task.index} stopped mid-call; running it again"
        )

    async def _too_late(self, work: Work) -> bool:
        """The job's deadline cannot be met by a new attempt: the task fails (recoverably)
        instead of spending a call whose result would come too late."""
        task = work.task
        assert task.expires_at is not None
        now = self.committer.clock()
        expected = await self.runner.durations.expected(self._budget(work))
        if now + expected <= task.expires_at:
            return False
        why = "passed" if now >= task.expires_at else f"is too close ({expected:.0f}s needed)"
        async with self.committer.transaction() as cs:
            cs.change(
                task,
                TaskStatus.FAILED,
                message=f"not started: the job's deadline {why}",
                failure=Failure(
                    f"the job's deadline {why}", ErrorClass.DEADLINE_EXCEEDED, recoverable=True
                ),
            )
        metrics.task_outcomes.labels(self.spec.name, TaskStatus.FAILED).inc()
        log.warning("not started: the job's deadline %s", why, extra={"event": "fatal"})
        await self.handler.after_commit(work, cs)
        return True

    async def _reused(self, work: Work) -> bool:
        """An identical task succeeded lately: take its result, no provider call."""
        task = work.task
        assert task.payload_hash is not None
        since = self.committer.clock() - self.options.reuse_ttl
        async with self.committer.db.read() as session:
            earlier = await queries.reusable_result(
                session, task.kind, task.payload_hash, since=since, exclude=task.id
            )
        if earlier is None or earlier.result is None:
            return False
        async with self.committer.transaction() as cs:
            cs.change(
                task,
                TaskStatus.SUCCEEDED,
                message=f"reused the result of job {earlier.job_id} task {earlier.index}"
                " (no provider call)",
                details={"reused_from": {"job_id": earlier.job_id, "index": earlier.index}},
                result=earlier.result,
            )
        metrics.reused_results.labels(self.spec.name).inc()
        metrics.task_outcomes.labels(self.spec.name, TaskStatus.SUCCEEDED).inc()
        log.info("reused an earlier result", extra={"event": "success", "reused": True})
        await self.handler.after_commit(work, cs)
        return True
