"""One video segment's life: submit to fal, commit the request id, poll, fetch the result.

Each message is one short step; no message is held while fal generates:

* RUN: take a breaker permit and a provider slot (or wait for one), mark SUBMITTING, submit,
  commit the request id and URLs (RUNNING) before anything else, schedule the first poll.
  A RUNNING task's RUN message resumes polling: the request is never submitted twice. A
  SUBMITTING task whose submit outlived its deadline (the worker died mid-submit) lost its
  request id: it is submitted again, and an event says so. A SUBMITTING task still within its
  deadline is another delivery's work in progress, and the message is dropped.
* POLL: ask fal for the status; reschedule itself (through RabbitMQ's delay tiers) until the
  request is COMPLETED, then fetch the video URL and mark SUCCEEDED. A poll triggered by fal's
  webhook fetches the result directly.
* CANCEL: ask fal to cancel the request of a cancelled task.

Failures go through the shared resilience layer: transient ones are retried with backoff as a
new attempt, permanent ones (or exhausted retries) fail the segment — never the job. While the
circuit is open, work is deferred without spending an attempt.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from common.breaker_events import BreakerEvents
from common.broker import Outgoing
from common.domain.events import EventDraft, EventType
from common.domain.states import TaskStatus
from common.lifecycle import bind_task
from common.messages import MessageKind, TaskMessage, outgoing
from common.resilience import (
    CircuitOpenError,
    ErrorClass,
    ProviderError,
    RetryPolicy,
    call_with_breaker,
    call_with_permit,
)
from common.store.ledger import StaleTask
from common.store.records import TaskRecord
from common.task_steps import defer, fail_attempt
from common.unit_of_work import UnitOfWork
from services.video_worker.ports import Phase, Progress, ProviderRequest, VideoProvider

log = logging.getLogger(__name__)

PROVIDER = "fal"
# Committing a request id is retried in-process before giving up: losing it means paying again.
COMMIT_TRIES = 3


@dataclass(frozen=True)
class SegmentSettings:
    poll_interval: float
    call_timeout: float
    # Where fal should call back when a request finishes; None: poll only.
    webhook_url: str | None = None
    # Delay of the first status check after a submit (None: the poll interval; 0: right away,
    # in the same step, saving a message round trip when generations are very fast).
    first_poll_delay: float | None = None


class SegmentHandler:
    def __init__(
        self,
        uow: UnitOfWork,
        provider: VideoProvider,
        *,
        breakers: BreakerEvents,
        policy: RetryPolicy,
        settings: SegmentSettings,
    ) -> None:
        self.uow = uow
        self.provider = provider
        self.breakers = breakers
        self.breaker = breakers.registry.get(PROVIDER)
        self.policy = policy
        self.settings = settings

    async def handle(self, message: TaskMessage, *, redelivered: bool) -> None:
        task = await self.uow.tasks.load(message.task_id)
        if task is None or task.attempt != message.attempt:
            raise StaleTask(f"message for attempt {message.attempt} of task {message.task_id}")
        bind_task(task.job_id, task.index)
        if message.kind is MessageKind.RUN:
            await self._run(task, message)
        elif message.kind is MessageKind.POLL:
            await self._poll(task, message)
        else:
            await self._cancel(task)

    # RUN ---------------------------------------------------------------------------------

    async def _run(self, task: TaskRecord, message: TaskMessage) -> None:
        status = TaskStatus(task.status)
        if status is TaskStatus.RUNNING:
            await self._resume(task)
            return
        lost = status is TaskStatus.SUBMITTING
        if lost and not (message.reissued or self._overdue(task)):
            raise StaleTask("another delivery of this message is submitting it")
        if not lost and status not in (TaskStatus.QUEUED, TaskStatus.RETRYING):
            raise StaleTask(f"task is {status.value}")
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            await self._defer(task, message, exc.retry_in)
            return
        try:
            async with self.uow.transaction() as tx:
                deadline = tx.now + self.settings.call_timeout + tx.timings.stale_after
                if lost:
                    text = (
                        f"the request id of attempt {task.attempt} was lost (the worker"
                        " stopped mid-submit); submitting again"
                    )
                    tx.note(task, self._event(task, text), deadline_at=deadline)
                else:
                    tx.start(
                        task,
                        message=f"submitting attempt {task.attempt} of {task.max_attempts}",
                        deadline_at=deadline,
                    )
                self.breakers.record(tx, task.job_id)
        except BaseException:
            self.breaker.release(permit)
            raise
        if tx.applied.get(task.id) is TaskStatus.WAITING:
            self.breaker.release(permit)
            return
        task = tx.after(task)
        try:
            request = await call_with_permit(
                self.breaker,
                permit,
                lambda: self.provider.submit(
                    task.payload["model"],
                    task.payload["arguments"],
                    webhook_url=self.settings.webhook_url,
                    low_priority=task.priority == 1,
                ),
                timeout=self.settings.call_timeout,
                provider=PROVIDER,
            )
        except ProviderError as exc:
            await self._attempt_failed(task, exc)
            return
        await self._submitted(task, request)

    async def _submitted(self, task: TaskRecord, request: ProviderRequest) -> None:
        """Commit the request id before anything else; never drop a paid request silently."""
        first_poll = self.settings.first_poll_delay
        inline = first_poll == 0
        for attempt in range(1, COMMIT_TRIES + 1):
            try:
                async with self.uow.transaction() as tx:
                    tx.change(
                        task,
                        TaskStatus.RUNNING,
                        message=f"submitted to fal as request {request.request_id}",
                        details={"request_id": request.request_id},
                        request_id=request.request_id,
                        status_url=request.status_url,
                        response_url=request.response_url,
                        cancel_url=request.cancel_url,
                        poll_chain=task.poll_chain + 1,
                        deadline_at=tx.now + self._poll_window(),
                    )
                    if not inline:
                        poll = self._poll_message(
                            task, "", chain=task.poll_chain + 1, delay=first_poll
                        )
                        tx.outgoing.append(poll)
                    self.breakers.record(tx, task.job_id)
                break
            except StaleTask:
                now = await self.uow.tasks.load(task.id)
                if now is not None and now.request_id == request.request_id:
                    return  # an earlier try did commit (its answer was lost); the deadline polls
                # Cancelled (or re-queued) while we submitted: do not leave it running at fal.
                log.warning(
                    "task moved on during submit; cancelling fal request %s", request.request_id
                )
                await self._cancel_request(request)
                raise
            except Exception:
                if attempt == COMMIT_TRIES:
                    raise
                log.warning(
                    "committing request %s failed; retrying", request.request_id, exc_info=True
                )
                await asyncio.sleep(0.5 * attempt)
        if inline:
            running = tx.after(task)
            first = TaskMessage(
                task.id, task.job_id, MessageKind.POLL, task.attempt, chain=running.poll_chain
            )
            await self._poll(running, first)

    async def _resume(self, task: TaskRecord) -> None:
        """A RUNNING task's run message: its request exists, so poll it (on a new chain)."""
        async with self.uow.transaction() as tx:
            tx.note(
                task,
                self._event(task, f"resuming fal request {task.request_id}"),
                poll_chain=task.poll_chain + 1,
                deadline_at=tx.now + self._poll_window(),
            )
            tx.outgoing.append(self._poll_message(task, "", chain=task.poll_chain + 1, delay=0))

    # POLL --------------------------------------------------------------------------------

    async def _poll(self, task: TaskRecord, message: TaskMessage) -> None:
        if task.status != TaskStatus.RUNNING:
            raise StaleTask(f"task is {task.status}")
        if not message.once and message.chain != task.poll_chain:
            raise StaleTask(f"poll chain {message.chain} replaced by {task.poll_chain}")
        request = _request_of(task)
        try:
            if message.once:
                # fal called back: the request is done, so fetch the result straight away.
                progress = Progress(Phase.COMPLETED)
            else:
                progress = await call_with_breaker(
                    self.breaker,
                    lambda: self.provider.status(request),
                    timeout=self.settings.call_timeout,
                    provider=PROVIDER,
                )
            if progress.phase is Phase.COMPLETED:
                video = await call_with_breaker(
                    self.breaker,
                    lambda: self.provider.result(request),
                    timeout=self.settings.call_timeout,
                    provider=PROVIDER,
                )
        except CircuitOpenError as exc:
            if not message.once:
                await self._repoll(task, message, seen=message.seen, delay=exc.retry_in)
            return
        except ProviderError as exc:
            if message.once and exc.status_code == 400:
                return  # not finished after all ("still in progress"): the polls carry on
            if exc.retryable and exc.error_class is not ErrorClass.UNPROCESSABLE:
                # The status call failed, not the generation: poll again later.
                if not message.once:
                    delay = max(self.settings.poll_interval, exc.retry_after or 0.0)
                    await self._repoll(task, message, seen=message.seen, delay=delay)
                return
            await self._attempt_failed(task, exc)
            return
        if progress.phase is not Phase.COMPLETED:
            if not message.once:
                seen = _seen(progress.phase, progress.queue_position)
                await self._repoll(task, message, seen=seen)
            return
        async with self.uow.transaction() as tx:
            tx.change(
                task,
                TaskStatus.SUCCEEDED,
                message="video ready",
                details={"result_url": video.url},
                result={
                    "url": video.url,
                    "content_type": video.content_type,
                    "file_name": video.file_name,
                    "file_size": video.file_size,
                },
            )
            self.breakers.record(tx, task.job_id)

    async def _repoll(
        self, task: TaskRecord, message: TaskMessage, *, seen: str, delay: float | None = None
    ) -> None:
        """Schedule the next poll; write only when there is news or the deadline runs short."""
        wait = self.settings.poll_interval if delay is None else delay
        news = seen != message.seen
        now = self.uow.clock()
        short = (task.deadline_at or 0.0) < now + wait + self.uow.timings.stale_after / 2
        next_poll = self._poll_message(task, seen, chain=task.poll_chain, delay=wait)
        if not news and not short and not self.breakers.pending:
            await self.uow.broker.publish([next_poll])
            return
        event = None
        if news:
            text = "in queue" if seen.startswith("queued") else "in progress"
            if seen.startswith("queued:"):
                text += f" (position {seen.split(':', 1)[1]})"
            event = self._event(task, text, provider_status=seen)
        async with self.uow.transaction() as tx:
            tx.note(task, event, deadline_at=tx.now + wait + tx.timings.stale_after)
            tx.outgoing.append(next_poll)
            self.breakers.record(tx, task.job_id)

    # Failure paths -----------------------------------------------------------------------

    async def _attempt_failed(self, task: TaskRecord, error: ProviderError) -> None:
        async with self.uow.transaction() as tx:
            fail_attempt(tx, task, error, self.policy)
            self.breakers.record(tx, task.job_id)

    async def _defer(self, task: TaskRecord, message: TaskMessage, delay: float) -> None:
        async with self.uow.transaction() as tx:
            defer(tx, task, message, delay, PROVIDER)
            self.breakers.record(tx, task.job_id)

    # CANCEL ------------------------------------------------------------------------------

    async def _cancel(self, task: TaskRecord) -> None:
        if task.status != TaskStatus.CANCELLED or not task.cancel_url:
            raise StaleTask("nothing to cancel at the provider")
        requested = await self._cancel_request(_request_of(task))
        if requested is None:
            return
        text = "cancellation requested at fal" if requested else "fal had already finished"
        async with self.uow.transaction() as tx:
            tx.note(task, self._event(task, text, request_id=task.request_id))

    async def _cancel_request(self, request: ProviderRequest) -> bool | None:
        """Best effort; None when fal could not be asked."""
        try:
            return await call_with_breaker(
                self.breaker,
                lambda: self.provider.cancel(request),
                timeout=self.settings.call_timeout,
                provider=PROVIDER,
            )
        except (ProviderError, CircuitOpenError) as exc:
            log.warning("could not cancel fal request %s: %s", request.request_id, exc)
            return None

    # Helpers -----------------------------------------------------------------------------

    def _overdue(self, task: TaskRecord) -> bool:
        return task.deadline_at is not None and task.deadline_at <= self.uow.clock()

    def _poll_window(self) -> float:
        return self.settings.poll_interval + self.uow.timings.stale_after

    def _event(self, task: TaskRecord, message: str, **details: object) -> EventDraft:
        return EventDraft(
            EventType.TASK_PROGRESS,
            message=message,
            task_index=task.index,
            task_status=task.status,
            details=dict(details),
        )

    def _poll_message(
        self, task: TaskRecord, seen: str, *, chain: int, delay: float | None = None
    ) -> Outgoing:
        poll = TaskMessage(
            task.id, task.job_id, MessageKind.POLL, task.attempt, chain=chain, seen=seen
        )
        wait = self.settings.poll_interval if delay is None else delay
        return outgoing(poll, task.kind, job_priority=task.priority, delay=wait)


def _request_of(task: TaskRecord) -> ProviderRequest:
    return ProviderRequest(
        request_id=task.request_id or "",
        status_url=task.status_url or "",
        response_url=task.response_url or "",
        cancel_url=task.cancel_url or "",
    )


def _seen(phase: Phase, position: int | None) -> str:
    return f"queued:{position}" if phase is Phase.QUEUED else phase.value
