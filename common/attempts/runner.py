"""The attempt runner: one task's life, message by message, the same for every kind.

Each message is one short step; a polled kind's worker holds no message while the provider
generates:

* RUN: check the message is about the task's current attempt and state; take a circuit-breaker
  permit (or defer the message, attempt unspent, while the circuit is open); start the attempt
  (with a provider slot when the kind has a pool, or WAITING for one); call the provider through
  the kind's handler. A one-shot kind's result is recorded at once. A polled kind's request id
  is committed before anything else, then polled. A RUN for a polled task already RUNNING
  resumes polling its request: a request is never submitted twice. A task caught mid-call past
  its deadline (or re-issued by the sweeper) lost its worker: an event says so and the attempt
  runs again. A task mid-call within its deadline is another delivery's work: the message is
  dropped.
* POLL: ask the provider about the request; reschedule itself (through RabbitMQ's delay tiers)
  until it is done, then record the result. A poll triggered by a webhook goes straight to the
  result.
* CANCEL: cancel the provider request of a cancelled task.

Failures go through the kind's retry policy: transient ones are retried with backoff as a new
attempt, permanent ones (or exhausted retries) fail the task, never the job. A task that others
wait for (a story's plan) releases them when it succeeds and skips them when it fails for good.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from common import metrics
from common.attempts.estimates import Durations
from common.attempts.kind import (
    KindHandler,
    Pending,
    ProviderCalls,
    RateLimits,
    RequestFailed,
    Submitted,
    Succeeded,
    Work,
)
from common.attempts.steps import defer, fail_attempt, progress
from common.attempts.usage import CallTally
from common.breaker_events import BreakerEvents
from common.committer import GroupCommitter
from common.domain.changes import ChangeSet, Failure, JobTasksChange, StaleTask
from common.domain.events import EventDraft
from common.domain.kinds import REUSE
from common.domain.messages import MessageKind, Send, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import TaskStatus
from common.leases import WorkerLease
from common.logs import bind_task
from common.resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ErrorClass,
    GiveUp,
    Permit,
    ProviderError,
    Retry,
    RetryPolicy,
)
from common.resilience.retrying import retrying
from common.settings import Settings
from common.store import queries

log = logging.getLogger(__name__)

# Committing a request id is retried in-process before giving up: losing it means paying again.
COMMIT_RETRIES = Backoff(initial=0.5, multiplier=2.0, cap=2.0, max_retries=2)
# Looking again at a worker's lease a little after it would have run out.
LEASE_MARGIN = 0.5
# A delayed message may come back this early (the broker's delay tolerance).
ADOPT_EARLY = 0.5


@dataclass(frozen=True)
class AttemptOptions:
    call_timeout: float
    # Polled kinds: seconds between status checks, and from a submit to the first check (None:
    # the interval; 0: right away, in the same step, for providers that finish very fast).
    poll_interval: float = 2.0
    first_poll_delay: float | None = None
    # How long a result may be reused by an identical task of a job that asks for reuse.
    reuse_ttl: float = 86_400.0
    # Cap on a provider's Retry-After when it pauses the provider for every worker.
    max_pause: float = 120.0
    # Polled kinds whose submits name a webhook: how long after an interrupted submit began a
    # worker waits for the provider's webhook to name the request (common.attempts.webhooks)
    # before it submits again. 0: submit again at once (no webhooks: nothing could tell).
    adopt_window: float = 0.0

    @classmethod
    def of(cls, settings: Settings, *, call_timeout: float, **kind: Any) -> AttemptOptions:
        """A kind's options (`kind`: its polling and webhook ones) with the fleet-wide settings
        every kind shares."""
        return cls(
            call_timeout=call_timeout,
            reuse_ttl=settings.reuse_ttl,
            max_pause=settings.max_retry_after,
            **kind,
        )


@dataclass(frozen=True)
class Registration:
    """A kind a worker runs: its handler, retry policy and options."""

    handler: KindHandler
    policy: RetryPolicy
    options: AttemptOptions


class AttemptRunner:
    """Runs the tasks of the kinds registered with it (a worker's `TaskHandler`)."""

    def __init__(
        self,
        committer: GroupCommitter,
        registrations: Sequence[Registration],
        *,
        breakers: BreakerEvents,
        lease: WorkerLease | None = None,
    ) -> None:
        self.committer = committer
        self.breakers = breakers
        # This worker's lease (None: tasks caught mid-call wait for their deadline).
        self.lease = lease
        self.durations = Durations(committer.db)
        self.kinds = {r.handler.spec.name: r for r in registrations}
        self.tally = CallTally()
        committer.hooks.append(self.tally)

    async def handle(self, message: TaskMessage, *, redelivered: bool) -> None:
        task = await self.committer.tasks.load(message.task_id)
        if task is None or task.attempt != message.attempt:
            raise StaleTask(f"message for attempt {message.attempt} of task {message.task_id}")
        registration = self.kinds.get(task.kind)
        if registration is None:
            raise LookupError(f"this worker runs no {task.kind} tasks")
        bind_task(task.job_id, task.index, task.attempt)
        step = _Step(self, registration, task, message)
        if message.kind is MessageKind.RUN:
            await step.run(redelivered=redelivered)
        elif message.kind is MessageKind.POLL:
            await step.poll()
        else:
            await step.cancel()


class _Step:
    """One message's step for one task."""

    def __init__(
        self,
        runner: AttemptRunner,
        registration: Registration,
        task: TaskRecord,
        message: TaskMessage,
    ) -> None:
        self.runner = runner
        self.registration = registration
        self.committer = runner.committer
        self.kinds = runner.committer.kinds
        self.handler = registration.handler
        self.spec = registration.handler.spec
        self.policy = registration.policy
        self.options = registration.options
        self.breaker: CircuitBreaker = runner.breakers.breaker(self.spec.provider)
        self.task = task
        self.message = message

    def _calls(self, permit: Permit | None = None) -> ProviderCalls:
        return ProviderCalls(
            self.breaker,
            timeout=self.options.call_timeout,
            provider=self.spec.provider,
            permit=permit,
        )

    async def _work(self, task: TaskRecord) -> Work:
        return Work(task, await self.handler.load(task))

    # RUN ------------------------------------------------------------------------------------

    async def run(self, *, redelivered: bool = False) -> None:
        task, spec = self.task, self.spec
        status = TaskStatus(task.status)
        if spec.polled and status is TaskStatus.RUNNING:
            await self._resume()
            return
        lost = status is TaskStatus(spec.in_flight_status)
        if lost and not await self._worker_lost(redelivered):
            return
        if lost and await self._awaiting_webhook():
            return
        if not lost and status not in (TaskStatus.QUEUED, TaskStatus.RETRYING):
            raise StaleTask(f"task is {status.value}")
        work = await self._work(task)
        if task.expires_at is not None and await self._too_late(work):
            return
        if task.payload.get(REUSE) and task.payload_hash and await self._reused(work):
            return
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            async with self.committer.transaction() as cs:
                defer(cs, task, self.message, exc.retry_in, spec.provider)
            metrics.task_deferrals.labels(spec.name, "circuit_open").inc()
            log.info(
                "%s circuit open; deferred %.1fs",
                spec.provider,
                exc.retry_in,
                extra={"event": "wait", "retry_in": round(exc.retry_in, 3)},
            )
            return
        calls = self._calls(permit)
        worker = self.runner.lease.id if self.runner.lease is not None else None
        try:
            async with self.committer.transaction() as cs:
                deadline = cs.now + self.options.call_timeout + cs.timings.stale_after
                if lost:
                    event = progress(task, self._lost_text())
                    cs.note(task, event, deadline_at=deadline, worker=worker, started_at=cs.now)
                else:
                    verb = "submitting" if spec.polled else "running"
                    cs.start(
                        task,
                        message=f"{verb} attempt {task.attempt} of {task.max_attempts}",
                        deadline_at=deadline,
                        budget=self._budget(work),
                        tokens=self.handler.tokens(work),
                        resend=replace(self.message, reissued=False, recheck=False),
                        worker=worker,
                        started_at=cs.now,
                    )
        except BaseException:
            calls.release()
            raise
        if not self._started(cs, lost=lost):
            calls.release()
            return
        work = replace(work, task=cs.after(task))
        try:
            outcome = await self.handler.submit(work, calls)
        except ProviderError as exc:
            await self._failed(work, exc)
            return
        finally:
            calls.release()
            # The start spent one call of the budget; a kind may make more in one step.
            self.runner.tally.add(self._budget(work), calls.made - 1)
        if isinstance(outcome, Submitted):
            await self._submitted(work, outcome)
        else:
            await self._succeeded(work, outcome)

    def _started(self, cs: ChangeSet, *, lost: bool) -> bool:
        """Log (and count) how the attempt began; False when it waits for a slot instead."""
        task, spec = self.task, self.spec
        if task.id in cs.deferred:
            metrics.task_deferrals.labels(spec.name, "budget").inc()
            log.info(
                "%s budget: deferred %.1fs",
                spec.provider,
                cs.deferred[task.id],
                extra={"event": "wait", "retry_in": round(cs.deferred[task.id], 3)},
            )
            return False
        if cs.applied.get(task.id) is TaskStatus.WAITING:
            metrics.task_deferrals.labels(spec.name, "slot").inc()
            log.info("waiting for a %s slot", spec.slot_pool, extra={"event": "wait"})
            return False
        if lost:
            metrics.lost_submits.labels(spec.name).inc()
            log.warning(self._lost_text(), extra={"event": "warning"})
        else:
            log.info(
                "%s attempt %d of %d",
                "submitting" if spec.polled else "running",
                task.attempt,
                task.max_attempts,
                extra={"event": "submit", "kind": spec.name, "provider": spec.provider},
            )
        return True

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

    async def _submitted(self, work: Work, request: Submitted) -> None:
        """Commit the request id before anything else; never drop a paid request silently."""
        task = work.task
        inline = self.options.first_poll_delay == 0

        async def commit() -> ChangeSet:
            async with self.committer.transaction() as cs:
                cs.change(
                    task,
                    TaskStatus.RUNNING,
                    message=f"submitted to {self.spec.provider} as request {request.request_id}",
                    details={"request_id": request.request_id},
                    request_id=request.request_id,
                    handle=request.handle,
                    poll_chain=task.poll_chain + 1,
                    deadline_at=cs.now + self._poll_window(),
                )
                if not inline:
                    cs.send(
                        task,
                        self._poll_message(task.poll_chain + 1),
                        delay=self._first_poll_delay(),
                    )
            return cs

        try:
            cs = await retrying(
                commit,
                backoff=COMMIT_RETRIES,
                retry_on=lambda exc: not isinstance(exc, StaleTask),
                what=f"committing request {request.request_id}",
                sleep=self.committer.sleep,
            )
        except StaleTask:
            now = await self.committer.tasks.load(task.id)
            if now is not None and now.request_id == request.request_id:
                return  # an earlier try did commit (its answer was lost); the deadline polls
            # Cancelled (or re-queued) while we submitted: do not leave it running there.
            log.warning(
                "task moved on during submit; cancelling %s request %s",
                self.spec.provider,
                request.request_id,
            )
            submitted = replace(task, request_id=request.request_id, handle=request.handle)
            await self._cancel_request(replace(work, task=submitted))
            raise
        log.info(
            "submitted to %s as request %s",
            self.spec.provider,
            request.request_id,
            extra={"event": "submit", "request_id": request.request_id},
        )
        if inline:
            running = cs.after(task)
            first = self._poll_message(running.poll_chain)
            step = _Step(self.runner, self.registration, running, first)
            await step._poll_work(replace(work, task=running))

    async def _resume(self) -> None:
        """A RUNNING polled task's run message: its request exists, so poll it (new chain)."""
        task = self.task
        async with self.committer.transaction() as cs:
            text = f"resuming {self.spec.provider} request {task.request_id}"
            cs.note(
                task,
                progress(task, text),
                poll_chain=task.poll_chain + 1,
                deadline_at=cs.now + self._poll_window(),
            )
            cs.send(task, self._poll_message(task.poll_chain + 1))

    # POLL -----------------------------------------------------------------------------------

    async def poll(self) -> None:
        task, message = self.task, self.message
        if task.status != TaskStatus.RUNNING:
            raise StaleTask(f"task is {task.status}")
        if not message.once and message.chain != task.poll_chain:
            raise StaleTask(f"poll chain {message.chain} replaced by {task.poll_chain}")
        await self._poll_work(await self._work(task))

    async def _check(self, work: Work) -> Pending | Succeeded | RequestFailed:
        """The kind's check, its provider calls tallied for the shared budget."""
        calls = self._calls()
        try:
            return await self.handler.check(work, calls, notified=self.message.once)
        finally:
            self.runner.tally.add(self._budget(work), calls.made)

    async def _pause_if_limited(self, work: Work, error: ProviderError) -> None:
        """A 429 with Retry-After on a status check pauses starts for every worker too."""
        if error.error_class is not ErrorClass.RATE_LIMITED or not error.retry_after:
            return
        async with self.committer.transaction() as cs:
            until = cs.now + min(error.retry_after, self.options.max_pause)
            cs.pause(self._budget(work), until)

    async def _poll_work(self, work: Work) -> None:
        message = self.message
        try:
            outcome = await self._check(work)
        except CircuitOpenError as exc:
            if not message.once:
                await self._repoll(seen=message.seen, delay=exc.retry_in)
            log.info("status check put off: circuit open", extra={"event": "wait"})
            return
        except ProviderError as exc:
            if exc.retryable:
                # The status call failed, not the request: check again later.
                await self._pause_if_limited(work, exc)
                log.info(
                    "status check failed (%s); checking again later",
                    exc.error_class,
                    extra={"event": "status_check", "error": exc.message},
                )
                if not message.once:
                    delay = max(self.options.poll_interval, exc.retry_after or 0.0)
                    await self._repoll(seen=message.seen, delay=delay)
                return
            await self._failed(work, exc)
            return
        log.info(
            "status of request %s: %s",
            work.task.request_id,
            outcome.text if isinstance(outcome, Pending) else "done",
            extra={"event": "status_check", "request_id": work.task.request_id},
        )
        if isinstance(outcome, Pending):
            if not message.once:
                await self._repoll(seen=outcome.seen, text=outcome.text)
        elif isinstance(outcome, RequestFailed):
            await self._failed(work, outcome.error)
        else:
            await self._succeeded(work, outcome)

    async def _repoll(self, *, seen: str, delay: float | None = None, text: str = "") -> None:
        """Schedule the next poll; write only when there is news or the deadline runs short."""
        task, message = self.task, self.message
        wait = self.options.poll_interval if delay is None else delay
        news = seen != message.seen
        now = self.committer.clock()
        short = (task.deadline_at or 0.0) < now + wait + self.committer.timings.stale_after / 2
        next_poll = replace(self._poll_message(task.poll_chain), seen=seen)
        if not news and not short and not self.committer.hooks_pending:
            await self.committer.send_now(Send(next_poll, task.kind, task.priority, delay=wait))
            return
        event: EventDraft | None = None
        if news:
            event = progress(task, text or seen, provider_status=seen)
        async with self.committer.transaction() as cs:
            cs.note(task, event, deadline_at=cs.now + wait + cs.timings.stale_after)
            cs.send(task, next_poll, delay=wait)

    # Outcomes -------------------------------------------------------------------------------

    async def _succeeded(self, work: Work, outcome: Succeeded) -> None:
        task = work.task
        async with self.committer.transaction() as cs:
            cs.change(
                task,
                TaskStatus.SUCCEEDED,
                message=outcome.message,
                details=outcome.details,
                result=outcome.result,
            )
            self.handler.on_success(cs, work, outcome)
            self._learn(cs, work, outcome.limits)
            cs.observe(self._budget(work), max(0.0, cs.now - (task.started_at or task.updated_at)))
            for kind in self.kinds.dependents(task.kind):
                cs.change_job_tasks(
                    JobTasksChange(
                        task.job_id,
                        kind,
                        TaskStatus.BLOCKED,
                        TaskStatus.QUEUED,
                        f"{self.spec.noun} ready",
                        values={"deadline_at": cs.now + cs.timings.stale_after},
                        send_run=True,
                    )
                )
        metrics.task_outcomes.labels(self.spec.name, TaskStatus.SUCCEEDED).inc()
        log.info(outcome.message, extra={"event": "success", **outcome.details})
        await self.handler.after_commit(work, cs)

    async def _failed(self, work: Work, error: ProviderError) -> None:
        task = work.task
        async with self.committer.transaction() as cs:
            decision = fail_attempt(cs, task, error, self.policy)
            budget = self._budget(work)
            if error.error_class is ErrorClass.RATE_LIMITED and error.retry_after:
                # The provider asked us to wait: every worker does, not only this task.
                cs.pause(budget, cs.now + min(error.retry_after, self.options.max_pause))
            if isinstance(decision, Retry):
                cs.charge_retry(budget, task)
            if isinstance(decision, GiveUp):
                failure = Failure(
                    f"the {self.spec.noun} failed: {error.message}",
                    ErrorClass.DEPENDENCY_FAILED,
                    True,
                )
                for kind in self.kinds.dependents(task.kind):
                    cs.change_job_tasks(
                        JobTasksChange(
                            task.job_id,
                            kind,
                            TaskStatus.BLOCKED,
                            TaskStatus.SKIPPED,
                            f"skipped: the {self.spec.noun} failed",
                            failure=failure,
                        )
                    )
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

    # Budgets, deadlines and reuse ----------------------------------------------------------

    def _budget(self, work: Work) -> str:
        """The shared budget an attempt spends: its provider's, for its model."""
        return f"{self.spec.provider}:{self.handler.model(work)}"

    def _learn(self, cs: ChangeSet, work: Work, limits: RateLimits | None) -> None:
        if limits is not None:
            cs.learn(
                self._budget(work),
                rpm=limits.requests,
                tpm=limits.tokens,
                used_requests=limits.used_requests,
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

    # CANCEL ---------------------------------------------------------------------------------

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

    # Helpers --------------------------------------------------------------------------------

    def _overdue(self) -> bool:
        deadline = self.task.deadline_at
        return deadline is not None and deadline <= self.committer.clock()

    def _poll_window(self) -> float:
        return self.options.poll_interval + self.committer.timings.stale_after

    def _first_poll_delay(self) -> float:
        first = self.options.first_poll_delay
        return self.options.poll_interval if first is None else first

    def _poll_message(self, chain: int) -> TaskMessage:
        task = self.task
        return TaskMessage(task.id, task.job_id, MessageKind.POLL, task.attempt, chain=chain)
