"""A story job's tasks: the plan (task 0), then the sets (1..N) in parallel.

The plan fixes title, logline, character roster and a one-line outline per segment, stores them
on the job, and unblocks every set in the same transaction. A set is written from that stored
plan only, so sets run in parallel and a set retried later matches the others. If the plan
fails for good, the sets are SKIPPED and RetryFailed re-runs the plan first.

A chat completion is one call of seconds: the message is held while it runs (bounded by the
call timeout and the worker's prefetch). A RUNNING task whose message comes back redelivered
lost its worker mid-call and simply runs again; a SUCCEEDED set is never generated twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.breaker_events import BreakerEvents
from common.domain.events import EventDraft, EventType
from common.domain.states import TaskKind, TaskStatus
from common.domain.story import story_summary
from common.errors import InvalidArgument
from common.lifecycle import bind_task
from common.messages import MessageKind, TaskMessage
from common.resilience import (
    CircuitOpenError,
    ErrorClass,
    GiveUp,
    PermanentError,
    ProviderError,
    RetryPolicy,
    TransientError,
    call_with_permit,
)
from common.store import queries
from common.store.ledger import Failure, JobTasksChange, StaleTask, Tx
from common.store.records import TaskRecord, load_tasks
from common.store.tables import Job, Task
from common.task_steps import defer, fail_attempt
from common.unit_of_work import UnitOfWork
from services.story_worker import script
from services.story_worker.files import StoryFiles, metadata_file_name, set_file_name
from services.story_worker.openai_adapter import StoryProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorySettings:
    call_timeout: float


class StoryHandler:
    def __init__(
        self,
        uow: UnitOfWork,
        provider: StoryProvider,
        *,
        breakers: BreakerEvents,
        policy: RetryPolicy,
        files: StoryFiles,
        settings: StorySettings,
    ) -> None:
        self.uow = uow
        self.provider = provider
        self.breakers = breakers
        self.breaker = breakers.registry.get(script.PROVIDER)
        self.policy = policy
        self.files = files
        self.settings = settings

    async def handle(self, message: TaskMessage, *, redelivered: bool) -> None:
        task = await self.uow.tasks.load(message.task_id)
        async with self.uow.db.read() as session:
            job = await queries.get_job(session, message.job_id)
        if task is None or job is None or task.attempt != message.attempt:
            raise StaleTask(f"message for attempt {message.attempt} of task {message.task_id}")
        if message.kind is not MessageKind.RUN:
            raise StaleTask(f"story tasks take no {message.kind} messages")
        bind_task(task.job_id, task.index)
        status = TaskStatus(task.status)
        rerun = status is TaskStatus.RUNNING
        overdue = task.deadline_at is not None and task.deadline_at <= self.uow.clock()
        if rerun and not (message.reissued or overdue):
            raise StaleTask("another delivery of this message is running it")
        if not rerun and status not in (TaskStatus.QUEUED, TaskStatus.RETRYING):
            raise StaleTask(f"task is {status.value}")
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            async with self.uow.transaction() as tx:
                defer(tx, task, message, exc.retry_in, script.PROVIDER)
                self.breakers.record(tx, task.job_id)
            return
        try:
            async with self.uow.transaction() as tx:
                self._start(tx, task, rerun=rerun)
                self.breakers.record(tx, task.job_id)
        except BaseException:
            self.breaker.release(permit)
            raise
        task = tx.after(task)
        is_plan = task.kind == TaskKind.STORY_PLAN
        system, user, name, schema = self._request(job, task)
        try:
            data = await call_with_permit(
                self.breaker,
                permit,
                lambda: self.provider.complete_json(
                    job.params["model"], system, user, name, schema
                ),
                timeout=self.settings.call_timeout,
                provider=script.PROVIDER,
            )
            if is_plan:
                await self._plan_done(
                    job, task, script.check_plan(data, job.params["total_segments"])
                )
            else:
                await self._set_done(job, task, data)
        except ProviderError as exc:
            await self._attempt_failed(task, exc)

    def _start(self, tx: Tx, task: TaskRecord, *, rerun: bool) -> None:
        deadline = tx.now + self.settings.call_timeout + tx.timings.stale_after
        what = "plan" if task.kind == TaskKind.STORY_PLAN else f"set {task.index}"
        if rerun:
            event = EventDraft(
                EventType.TASK_PROGRESS,
                message=f"the worker writing {what} stopped mid-call; writing it again",
                task_index=task.index,
                task_status=task.status,
            )
            tx.note(task, event, deadline_at=deadline)
        else:
            tx.change(
                task,
                TaskStatus.RUNNING,
                message=f"writing {what} (attempt {task.attempt} of {task.max_attempts})",
                deadline_at=deadline,
            )

    def _request(self, job: Job, task: TaskRecord) -> tuple[str, str, str, dict[str, Any]]:
        p = job.params
        if task.kind == TaskKind.STORY_PLAN:
            total = p["total_segments"]
            return (
                script.SYSTEM,
                script.plan_prompt(p["idea"], total),
                "story_plan",
                script.plan_schema(total),
            )
        plan = job.meta
        first, last = task.payload["first_segment"], task.payload["last_segment"]
        roster = [c["name"] for c in plan["characters"]]
        user = script.set_prompt(plan, task.index, p["total_sets"], first, last)
        return script.SYSTEM, user, "story_set", script.set_schema(roster, last - first + 1)

    # Outcomes ----------------------------------------------------------------------------

    async def _plan_done(self, job: Job, task: TaskRecord, plan: dict[str, Any]) -> None:
        meta = {**plan, "metadata_file": ""}
        if job.params["save_to_files"]:
            folder = job.params["output_directory"]
            meta["metadata_file"] = f"{folder}/{metadata_file_name(plan['title'])}"
        async with self.uow.transaction() as tx:
            tx.change(
                task,
                TaskStatus.SUCCEEDED,
                message=f'plan fixed: "{plan["title"]}" with {len(plan["characters"])} characters',
                result={"title": plan["title"]},
            )
            # A plan succeeds once per job (a SUCCEEDED task is never re-run), so the roster is
            # fixed from here on.
            tx.update_job(job.id, meta=meta)
            tx.emit(
                job.id,
                EventDraft(
                    EventType.STORY_PLANNED,
                    message=f'"{plan["title"]}": {plan["logline"]}',
                    details={
                        "title": plan["title"],
                        "characters": [c["name"] for c in plan["characters"]],
                    },
                ),
            )
            tx.change_job_tasks(
                JobTasksChange(
                    job.id,
                    TaskStatus.BLOCKED,
                    TaskStatus.QUEUED,
                    "plan ready",
                    values={"deadline_at": tx.now + tx.timings.stale_after},
                    send_run=True,
                )
            )
            self.breakers.record(tx, job.id)
        await self._write_metadata(job.id)

    async def _set_done(self, job: Job, task: TaskRecord, data: dict[str, Any]) -> None:
        plan = job.meta
        roster = [c["name"] for c in plan["characters"]]
        segments = script.check_set(
            data, roster, task.payload["first_segment"], task.payload["last_segment"]
        )
        file_path = ""
        if job.params["save_to_files"]:
            content = {
                "story_title": plan["title"],
                "set_number": task.index,
                "total_sets": job.params["total_sets"],
                "characters": plan["characters"],
                "segments": segments,
            }
            path = await self._write(job, set_file_name(plan["title"], task.index), content)
            file_path = self.files.relative(path)
        async with self.uow.transaction() as tx:
            tx.change(
                task,
                TaskStatus.SUCCEEDED,
                message=f"set {task.index} written ({len(segments)} segments)",
                details={"file_path": file_path} if file_path else {},
                result={
                    "segments_count": len(segments),
                    "file_path": file_path,
                    "segments": segments,
                },
            )
            self.breakers.record(tx, job.id)
        if tx.finished:
            await self._write_metadata(job.id)

    async def _write(self, job: Job, name: str, content: Any) -> Any:
        try:
            return await self.files.write(job.params["output_directory"], name, content)
        except InvalidArgument as exc:
            raise PermanentError(
                str(exc), provider="files", error_class=ErrorClass.OUTPUT
            ) from None
        except OSError as exc:
            raise TransientError(
                f"writing {name} failed: {exc.strerror}",
                provider="files",
                error_class=ErrorClass.OUTPUT,
            ) from None

    async def _attempt_failed(self, task: TaskRecord, error: ProviderError) -> None:
        async with self.uow.transaction() as tx:
            decision = fail_attempt(tx, task, error, self.policy)
            if task.kind == TaskKind.STORY_PLAN and isinstance(decision, GiveUp):
                failure = Failure(
                    f"the story plan failed: {error.message}", ErrorClass.DEPENDENCY_FAILED, True
                )
                tx.change_job_tasks(
                    JobTasksChange(
                        task.job_id,
                        TaskStatus.BLOCKED,
                        TaskStatus.SKIPPED,
                        "skipped: the plan failed",
                        failure=failure,
                    )
                )
            self.breakers.record(tx, task.job_id)
        log.info("attempt failed: %s", decision.reason)
        if tx.finished:
            await self._write_metadata(task.job_id)

    async def _write_metadata(self, job_id: str) -> None:
        """The job's metadata file from committed state (after the plan, and when it finishes)."""
        async with self.uow.db.read() as session:
            job = await queries.get_job(session, job_id)
            tasks = await load_tasks(session, Task.job_id == job_id)
        if job is None or not job.params["save_to_files"] or not job.meta.get("title"):
            return
        summary = story_summary(
            tasks,
            total_segments=job.params["total_segments"],
            finished=job.finished_at is not None,
            retry_history=job.retry_history,
        )
        content = {
            "story_title": job.meta["title"],
            "logline": job.meta["logline"],
            "genre": job.meta["genre"],
            "idea": job.params["idea"],
            "model": job.params["model"],
            "status": job.status,
            "characters": job.meta["characters"],
            "outline": job.meta["outline"],
            **summary,
            "sets": [
                {
                    "set_number": t.index,
                    "status": t.status,
                    "segments_count": (t.result or {}).get("segments_count", 0),
                    "file_path": (t.result or {}).get("file_path", ""),
                    "error": t.last_error if t.status != TaskStatus.SUCCEEDED else "",
                }
                for t in tasks
                if t.kind == TaskKind.STORY_SET
            ],
            "updated_at": datetime.now(UTC).isoformat(),
        }
        try:
            await self.files.write(
                job.params["output_directory"], metadata_file_name(job.meta["title"]), content
            )
        except (OSError, InvalidArgument):
            log.exception("could not write the metadata file of job %s", job_id)
