"""A story job's two task kinds: the plan (task 0), then the sets (1..N) in parallel.

The plan fixes title, logline, character roster and a one-line outline per segment and stores
them on the job; the runner then releases every set (they are blocked by the plan) in the same
transaction. A set is written from that stored plan only, so sets run in parallel and a set
retried later matches the others. If the plan fails for good, the runner skips the sets and
RetryFailed re-runs the plan first.

A chat completion is one call of seconds: both kinds are one-shot (the message is held while
the call runs, bounded by the call timeout and the worker's prefetch). Everything generic is
the attempt runner's (common.attempts); these handlers build the call, check the output, write
the files and say what success records.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from common.attempts.kind import KindHandler, ProviderCalls, Succeeded, Work
from common.committer import GroupCommitter
from common.domain.changes import ChangeSet, StaleTask
from common.domain.events import EventDraft, EventType
from common.domain.kinds import STORY_PLAN, STORY_SET
from common.domain.records import JobRecord, StoryParams, StoryPlan, TaskRecord
from common.domain.states import TaskStatus
from common.domain.story import story_summary
from common.errors import InvalidArgument
from common.resilience import ErrorClass, PermanentError, TransientError
from common.store.records import load_job, load_tasks
from common.store.tables import Task
from services.story_worker import script
from services.story_worker.files import StoryFiles, metadata_file_name, set_file_name
from services.story_worker.openai_adapter import Answer, StoryProvider

log = logging.getLogger(__name__)


class _StoryKind(KindHandler):
    def __init__(
        self, committer: GroupCommitter, provider: StoryProvider, files: StoryFiles
    ) -> None:
        self.committer = committer
        self.provider = provider
        self.files = files

    async def load(self, task: TaskRecord) -> JobRecord:
        async with self.committer.db.read() as session:
            job = await load_job(session, task.job_id)
        if job is None:
            raise StaleTask(f"job {task.job_id} is gone")
        return job

    def model(self, work: Work) -> str:
        return StoryParams.of(work.context.params).model

    async def _complete(
        self, calls: ProviderCalls, params: StoryParams, user: str, name: str, schema: Any
    ) -> Answer:
        return await calls(
            "chat",
            lambda: self.provider.complete_json(params.model, script.SYSTEM, user, name, schema),
        )

    async def after_commit(self, work: Work, cs: ChangeSet) -> None:
        if cs.finished:
            await self.write_metadata(work.task.job_id)

    async def write_file(self, params: StoryParams, name: str, content: Any) -> str:
        """Write a story file; its path relative to the output root."""
        try:
            path = await self.files.write(params.output_directory, name, content)
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
        return self.files.relative(path)

    async def write_metadata(self, job_id: str) -> None:
        """The job's metadata file from committed state (after the plan, and when it ends)."""
        async with self.committer.db.read() as session:
            job = await load_job(session, job_id)
            tasks = await load_tasks(session, Task.job_id == job_id)
        if job is None:
            return
        params, plan = StoryParams.of(job.params), StoryPlan.of(job.meta)
        if not params.save_to_files or not plan.title:
            return
        summary = story_summary(
            tasks,
            total_segments=params.total_segments,
            finished=job.finished_at is not None,
            retry_history=job.retry_history,
        )
        content = {
            "story_title": plan.title,
            "logline": plan.logline,
            "genre": plan.genre,
            "idea": params.idea,
            "model": params.model,
            "status": job.status,
            "characters": plan.characters,
            "outline": plan.outline,
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
                if t.kind == STORY_SET.name
            ],
            "updated_at": datetime.now(UTC).isoformat(),
        }
        try:
            await self.files.write(params.output_directory, metadata_file_name(plan.title), content)
        except (OSError, InvalidArgument):
            log.exception("could not write the metadata file of job %s", job_id)


class StoryPlans(_StoryKind):
    """Task 0 of a story job: title, logline, roster and outline."""

    spec = STORY_PLAN

    def tokens(self, work: Work) -> int:
        params = StoryParams.of(work.context.params)
        total = params.total_segments
        return script.expected_tokens(script.plan_prompt(params.idea, total), outline_lines=total)

    async def submit(self, work: Work, calls: ProviderCalls) -> Succeeded:
        params = StoryParams.of(work.context.params)
        total = params.total_segments
        answer = await self._complete(
            calls,
            params,
            script.plan_prompt(params.idea, total),
            "story_plan",
            script.plan_schema(total),
        )
        plan = script.check_plan(answer.data, total)
        return Succeeded(
            result={"title": plan["title"]},
            output=plan,
            limits=answer.limits,
            message=f'plan fixed: "{plan["title"]}" with {len(plan["characters"])} characters',
        )

    def on_success(self, cs: ChangeSet, work: Work, outcome: Succeeded) -> None:
        job: JobRecord = work.context
        plan = outcome.output
        params = StoryParams.of(job.params)
        metadata = ""
        if params.save_to_files:
            metadata = f"{params.output_directory}/{metadata_file_name(plan['title'])}"
        # A plan succeeds once per job (a SUCCEEDED task is never re-run), so the roster is
        # fixed from here on.
        cs.update_job(job.id, meta=StoryPlan.of({**plan, "metadata_file": metadata}).to_json())
        cs.emit(
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

    async def after_commit(self, work: Work, cs: ChangeSet) -> None:
        if cs.applied.get(work.task.id) is TaskStatus.SUCCEEDED or cs.finished:
            await self.write_metadata(work.task.job_id)


class StorySets(_StoryKind):
    """Tasks 1..N of a story job: a set of script segments, written from the stored plan."""

    spec = STORY_SET

    def _prompt(self, work: Work) -> str:
        task, job = work.task, work.context
        first, last = task.payload["first_segment"], task.payload["last_segment"]
        total_sets = StoryParams.of(job.params).total_sets
        return script.set_prompt(job.meta, task.index, total_sets, first, last)

    def tokens(self, work: Work) -> int:
        segments = work.task.payload["last_segment"] - work.task.payload["first_segment"] + 1
        return script.expected_tokens(self._prompt(work), segments=segments)

    async def submit(self, work: Work, calls: ProviderCalls) -> Succeeded:
        task, job = work.task, work.context
        params, plan = StoryParams.of(job.params), StoryPlan.of(job.meta)
        first, last = task.payload["first_segment"], task.payload["last_segment"]
        user = self._prompt(work)
        schema = script.set_schema(plan.roster, last - first + 1)
        answer = await self._complete(calls, params, user, "story_set", schema)
        segments = script.check_set(answer.data, plan.roster, first, last)
        file_path = ""
        if params.save_to_files:
            content = {
                "story_title": plan.title,
                "set_number": task.index,
                "total_sets": params.total_sets,
                "characters": plan.characters,
                "segments": segments,
            }
            file_path = await self.write_file(
                params, set_file_name(plan.title, task.index), content
            )
        return Succeeded(
            result={"segments_count": len(segments), "file_path": file_path, "segments": segments},
            message=f"set {task.index} written ({len(segments)} segments)",
            details={"file_path": file_path} if file_path else {},
            limits=answer.limits,
        )
