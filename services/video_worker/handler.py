"""One video segment's life: submit to fal, commit the request id, poll, fetch the result.

Each message is one short step; no message is held while fal generates:

* RUN: take a breaker permit and a provider slot (or wait for one), mark SUBMITTING, submit,
  commit the request id and URLs (RUNNING) before anything else, schedule the first poll.
  A RUNNING task's RUN message resumes polling: the request is never submitted twice. A
  SUBMITTING task whose message was redelivered or re-issued lost its request id (the worker
  died mid-submit): it is submitted again, and an event says so.
* POLL: ask fal for the status; reschedule itself (through RabbitMQ's delay tiers) until the
  request is COMPLETED, then fetch the video URL and mark SUCCEEDED.
* CANCEL: ask fal to cancel the request of a cancelled task.

Failures go through the shared resilience layer: transient ones are retried with backoff as a
new attempt, permanent ones (or exhausted retries) fail the segment — never the job. While the
circuit is open, work is deferred without spending an attempt.
"""

from __future__ import annotations

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
    ProviderError,
    RetryPolicy,
    call_with_breaker,
    call_with_permit,
)
from common.store.ledger import StaleTask, Tx
from common.store.tables import Task
from common.store.tasks import change, load_task, note, try_acquire_slot
from common.task_steps import defer, fail_attempt
from common.unit_of_work import UnitOfWork
from services.video_worker.ports import Phase, ProviderRequest, VideoProvider

log = logging.getLogger(__name__)

PROVIDER = "fal"


@dataclass(frozen=True)
class SegmentSettings:
    poll_interval: float
    call_timeout: float
    # Where fal should call back when a request finishes; None: poll only.
    webhook_url: str | None = None


class SegmentHandler:
    def __init__(
        self,
        uow: UnitOfWork,
        provider: VideoProvider,
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
        async with self.uow.db.read() as session:
            task = await load_task(session, message.task_id)
        if task is None or task.attempt != message.attempt:
            raise StaleTask(f"message for attempt {message.attempt} of task {message.task_id}")
        bind_task(task.job_id, task.index)
        if message.kind is MessageKind.RUN:
            await self._run(task, message, redelivered=redelivered)
        elif message.kind is MessageKind.POLL:
            await self._poll(task, message)
        else:
            await self._cancel(task)

    # RUN ---------------------------------------------------------------------------------

    async def _run(self, task: Task, message: TaskMessage, *, redelivered: bool) -> None:
        status = TaskStatus(task.status)
        if status is TaskStatus.RUNNING:
            await self._resume(task)
            return
        lost = status is TaskStatus.SUBMITTING
        if lost and not (redelivered or message.reissued):
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
                submitting = await self._start_attempt(tx, task, lost=lost)
        except BaseException:
            self.breaker.release(permit)
            raise
        if not submitting:
            self.breaker.release(permit)
            return
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
        async with self.uow.transaction() as tx:
            await change(
                tx,
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
            self._schedule_poll(tx, task, seen="")
            await self.breakers.record(tx, task.job_id)

    async def _start_attempt(self, tx: Tx, task: Task, *, lost: bool) -> bool:
        """Reserve a slot and mark SUBMITTING; False when the task has to wait for a slot."""
        deadline = tx.now + self.settings.call_timeout + tx.timings.stale_after
        if lost:
            await note(
                tx,
                task,
                EventDraft(
                    EventType.TASK_PROGRESS,
                    message=f"request id of attempt {task.attempt} was lost; submitting again",
                    task_index=task.index,
                    task_status=task.status,
                ),
                deadline_at=deadline,
            )
            return True
        if not task.holds_slot and not await try_acquire_slot(tx, PROVIDER):
            await change(tx, task, TaskStatus.WAITING, message="waiting for a provider slot")
            return False
        await change(
            tx,
            task,
            TaskStatus.SUBMITTING,
            message=f"submitting attempt {task.attempt} of {task.max_attempts}",
            holds_slot=True,
            deadline_at=deadline,
        )
        return True

    async def _resume(self, task: Task) -> None:
        """A RUNNING task's run message: its request exists, so poll it (on a new chain)."""
        async with self.uow.transaction() as tx:
            await note(
                tx,
                task,
                EventDraft(
                    EventType.TASK_PROGRESS,
                    message=f"resuming fal request {task.request_id}",
                    task_index=task.index,
                    task_status=task.status,
                ),
                poll_chain=task.poll_chain + 1,
                deadline_at=tx.now + self._poll_window(),
            )
            self._schedule_poll(tx, task, seen="", delay=0.0)

    # POLL --------------------------------------------------------------------------------

    async def _poll(self, task: Task, message: TaskMessage) -> None:
        if task.status != TaskStatus.RUNNING:
            raise StaleTask(f"task is {task.status}")
        if not message.once and message.chain != task.poll_chain:
            raise StaleTask(f"poll chain {message.chain} replaced by {task.poll_chain}")
        request = _request_of(task)
        try:
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
                await self._repoll(task, message, delay=exc.retry_in, seen=message.seen)
            return
        except ProviderError as exc:
            if exc.retryable and exc.error_class != "unprocessable":
                # The status call failed, not the generation: poll again later.
                if not message.once:
                    delay = max(self.settings.poll_interval, exc.retry_after or 0.0)
                    await self._repoll(task, message, delay=delay, seen=message.seen)
                return
            await self._attempt_failed(task, exc)
            return
        if progress.phase is not Phase.COMPLETED:
            if not message.once:
                await self._repoll(
                    task, message, seen=_seen(progress.phase, progress.queue_position)
                )
            return
        async with self.uow.transaction() as tx:
            await change(
                tx,
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
            await self.breakers.record(tx, task.job_id)

    async def _repoll(
        self, task: Task, message: TaskMessage, *, seen: str, delay: float | None = None
    ) -> None:
        """Schedule the next poll; write only when there is news or the deadline runs short."""
        now = self.uow.clock()
        news = seen != message.seen
        short = (task.deadline_at or 0.0) < now + self._poll_window() / 2
        if not news and not short and not self.breakers.pending:
            await self.uow.broker.publish([self._poll_message(task, seen, delay)])
            return
        event = None
        if news:
            text = "in queue" if seen.startswith("queued") else "in progress"
            if seen.startswith("queued:"):
                text += f" (position {seen.split(':', 1)[1]})"
            event = EventDraft(
                EventType.TASK_PROGRESS,
                message=text,
                task_index=task.index,
                task_status=task.status,
                details={"provider_status": seen},
            )
        async with self.uow.transaction() as tx:
            await note(tx, task, event, deadline_at=tx.now + self._poll_window())
            tx.outgoing.append(self._poll_message(task, seen, delay))
            await self.breakers.record(tx, task.job_id)

    # Failure paths -----------------------------------------------------------------------

    async def _attempt_failed(self, task: Task, error: ProviderError) -> None:
        async with self.uow.transaction() as tx:
            await fail_attempt(tx, task, error, self.policy)
            await self.breakers.record(tx, task.job_id)

    async def _defer(self, task: Task, message: TaskMessage, delay: float) -> None:
        async with self.uow.transaction() as tx:
            await defer(tx, task, message, delay, PROVIDER)
            await self.breakers.record(tx, task.job_id)

    # CANCEL ------------------------------------------------------------------------------

    async def _cancel(self, task: Task) -> None:
        if task.status != TaskStatus.CANCELLED or not task.cancel_url:
            raise StaleTask("nothing to cancel at the provider")
        try:
            requested = await call_with_breaker(
                self.breaker,
                lambda: self.provider.cancel(_request_of(task)),
                timeout=self.settings.call_timeout,
                provider=PROVIDER,
            )
        except (ProviderError, CircuitOpenError) as exc:
            log.warning("could not cancel fal request %s: %s", task.request_id, exc)
            return
        text = "cancellation requested at fal" if requested else "fal had already finished"
        async with self.uow.transaction() as tx:
            await note(
                tx,
                task,
                EventDraft(
                    EventType.TASK_PROGRESS,
                    message=text,
                    task_index=task.index,
                    task_status=task.status,
                    details={"request_id": task.request_id},
                ),
            )

    # Helpers -----------------------------------------------------------------------------

    def _poll_window(self) -> float:
        return self.settings.poll_interval + self.uow.timings.stale_after

    def _poll_message(self, task: Task, seen: str, delay: float | None = None) -> Outgoing:
        poll = TaskMessage(
            task.id, task.job_id, MessageKind.POLL, task.attempt, chain=task.poll_chain, seen=seen
        )
        wait = self.settings.poll_interval if delay is None else delay
        return outgoing(poll, task.kind, job_priority=task.priority, delay=wait)

    def _schedule_poll(self, tx: Tx, task: Task, *, seen: str, delay: float | None = None) -> None:
        tx.outgoing.append(self._poll_message(task, seen, delay))


def _request_of(task: Task) -> ProviderRequest:
    return ProviderRequest(
        request_id=task.request_id or "",
        status_url=task.status_url or "",
        response_url=task.response_url or "",
        cancel_url=task.cancel_url or "",
    )


def _seen(phase: Phase, position: int | None) -> str:
    return f"queued:{position}" if phase is Phase.QUEUED else phase.value
