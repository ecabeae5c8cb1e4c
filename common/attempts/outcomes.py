"""How an attempt ends: success (dependents released), failure (retried as a new attempt or
given up, dependents skipped), and the provider request of a cancelled task cancelled."""

from __future__ import annotations

import logging
from typing import Any

from common import metrics
from common.attempts.context import StepContext
from common.attempts.kind import RateLimits, Succeeded, Work
from common.attempts.steps import fail_attempt, progress
from common.domain.changes import ChangeSet, Failure, JobTasksChange, StaleTask
from common.domain.kinds import KindRegistry
from common.domain.records import TaskRecord
from common.domain.states import TaskStatus
from common.resilience import CircuitOpenError, ErrorClass, GiveUp, ProviderError, Retry

log = logging.getLogger(__name__)


def record_success(cs: ChangeSet, task: TaskRecord, outcome: Succeeded, *, budget: str) -> None:
    """`task`'s attempt succeeded with `outcome`: its result and event, and the attempt's
    duration learned for `budget` (provider:model). Then the kind's own changes, if any, and
    `release_dependents` last (their events follow the kind's: a story's title before its sets)."""
    cs.change(
        task,
        TaskStatus.SUCCEEDED,
        message=outcome.message,
        details=outcome.details,
        result=outcome.result,
    )
    cs.observe(budget, max(0.0, cs.now - (task.started_at or task.updated_at)))


def release_dependents(cs: ChangeSet, kinds: KindRegistry, task: TaskRecord) -> None:
    """The tasks waiting for `task`'s success start."""
    move_dependents(
        cs,
        kinds,
        task,
        TaskStatus.QUEUED,
        f"{kinds[task.kind].noun} ready",
        values={"deadline_at": cs.now + cs.timings.stale_after},
        send_run=True,
    )


def succeeded(kind: str, outcome: Succeeded) -> None:
    """Count and log a committed success."""
    metrics.task_outcomes.labels(kind, TaskStatus.SUCCEEDED).inc()
    log.info(outcome.message, extra={"event": "success", **outcome.details})


def move_dependents(
    cs: ChangeSet,
    kinds: KindRegistry,
    task: TaskRecord,
    to: TaskStatus,
    message: str,
    **change: Any,
) -> None:
    """The job's tasks of the kinds waiting for `task`'s (BLOCKED) move on to `to`."""
    for kind in kinds.dependents(task.kind):
        cs.change_job_tasks(
            JobTasksChange(task.job_id, kind, TaskStatus.BLOCKED, to, message, **change)
        )


class Outcomes(StepContext):
    """Recording what became of an attempt."""

    async def _succeeded(self, work: Work, outcome: Succeeded) -> None:
        task = work.task
        async with self.committer.transaction() as cs:
            record_success(cs, task, outcome, budget=self._budget(work))
            self.handler.on_success(cs, work, outcome)
            self._learn(cs, work, outcome.limits)
            if outcome.ran_for is not None:
                self.runner.run_times.observe(self._budget(work), outcome.ran_for)
            release_dependents(cs, self.kinds, task)
        succeeded(self.spec.name, outcome)
        await self.handler.after_commit(work, cs)

    async def _failed(self, work: Work, error: ProviderError) -> None:
        task = work.task
        async with self.committer.transaction() as cs:
            decision = fail_attempt(cs, task, error, self.policy)
            budget = self._budget(work)
            if error.error_class is ErrorClass.RATE_LIMITED and error.retry_after:
                # The provider asked us to wait: every worker does, not only this task.
                # From cs.now: when the 429 came back (the change set opens right after it;
                # the batch may commit later). A submit accepted after that ends the pause.
                cs.pause(budget, cs.now + min(error.retry_after, self.options.max_pause))
            if isinstance(decision, Retry):
                cs.charge_retry(budget, task)
            if isinstance(decision, GiveUp):
                failure = Failure(
                    f"the {self.spec.noun} failed: {error.message}",
                    ErrorClass.DEPENDENCY_FAILED,
                    True,
                )
                move_dependents(
                    cs, self.kinds, task, TaskStatus.SKIPPED,
                    f"skipped: the {self.spec.noun} failed", failure=failure,
                )  # fmt: skip
        if isinstance(decision, GiveUp):
            metrics.task_outcomes.labels(self.spec.name, TaskStatus.FAILED).inc()
            log.warning(
                "attempt %d failed for good: %s",
                task.attempt,
                decision.reason,
                extra={"event": "fatal", "error_class": error.error_class, "error": error.message},
            )
        else:
            metrics.task_retries.labels(self.spec.name, error.error_class).inc()
            log.info(
                "attempt %d failed: %s; retrying in %.2fs",
                task.attempt,
                decision.reason,
                decision.delay,
                extra={
                    "event": "retry",
                    "retry_in": round(decision.delay, 3),
                    "error_class": error.error_class,
                    "error": error.message,
                },
            )
        await self.handler.after_commit(work, cs)

    def _learn(self, cs: ChangeSet, work: Work, limits: RateLimits | None) -> None:
        if limits is not None:
            cs.learn(
                self._budget(work),
                rpm=limits.requests,
                tpm=limits.tokens,
                used_requests=limits.used_requests,
            )

    async def cancel(self) -> None:
        task = self.task
        if task.status != TaskStatus.CANCELLED or not task.request_id:
            raise StaleTask("nothing to cancel at the provider")
        requested = await self._cancel_request(await self._work(task))
        if requested is None:
            return
        provider = self.spec.provider
        text = f"cancellation requested at {provider}" if requested else f"{provider} had finished"
        async with self.committer.transaction() as cs:
            cs.note(task, progress(task, text, request_id=task.request_id))

    async def _cancel_request(self, work: Work) -> bool | None:
        """Best effort; None when the provider could not be asked."""
        try:
            return await self.handler.cancel(work, self._calls())
        except (ProviderError, CircuitOpenError) as exc:
            log.warning("could not cancel request %s: %s", work.task.request_id, exc)
            return None
