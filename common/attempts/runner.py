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

This module has RUN; `polling` has POLL, `outcomes` success, failure and CANCEL, `guards` what may
stop a RUN before any provider call; `context` what they share, `options` what a worker
registers per kind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from common import metrics
from common.attempts.estimates import Durations, RunTimes
from common.attempts.guards import Guards
from common.attempts.kind import Submitted, Work
from common.attempts.options import Registration
from common.attempts.polling import Polling
from common.attempts.steps import defer, progress
from common.attempts.usage import CallTally
from common.breaker_events import BreakerEvents
from common.committer import GroupCommitter
from common.domain.changes import ChangeSet, StaleTask
from common.domain.kinds import REUSE
from common.domain.messages import MessageKind, TaskMessage
from common.domain.states import TaskStatus
from common.leases import WorkerLease
from common.logs import bind_task
from common.resilience import Backoff, CircuitOpenError, ProviderError
from common.resilience.retrying import retrying

log = logging.getLogger(__name__)

# Committing a request id is retried in-process before giving up: losing it means paying again.
COMMIT_RETRIES = Backoff(initial=0.5, multiplier=2.0, cap=2.0, max_retries=2)


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
        self.run_times = RunTimes()
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


class _Step(Polling, Guards):
    """One message's step for one task: RUN here; POLL in `Polling`, outcomes and CANCEL in
    `Outcomes`, what may stop a RUN before any call in `Guards`."""

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

    async def _submitted(self, work: Work, request: Submitted) -> None:
        """Commit the request id before anything else; never drop a paid request silently."""
        task = work.task
        inline = self.options.first_poll_delay == 0

        # The first check may be due later than the usual window (a model learned to run long):
        # the deadline covers it, or the sweeper would take the waiting poll for a lost one.
        delay = 0.0 if inline else self._first_poll_delay(work)
        window = self._poll_window() + max(0.0, delay - self.options.poll_interval)
        answered = self.committer.clock()

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
                    deadline_at=cs.now + window,
                )
                cs.accepted(self._budget(work), answered)
                if not inline:
                    first = replace(self._poll_message(task.poll_chain + 1), due=cs.now + delay)
                    cs.send(task, first, delay=delay)
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
