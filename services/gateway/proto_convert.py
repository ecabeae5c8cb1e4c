"""Domain views to protobuf messages and back: the only module that knows both."""

from __future__ import annotations

import math
from typing import Any, cast

from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from orchestrator.v1 import jobs_pb2 as pb

from common.domain.events import EventType
from common.domain.records import EventRecord, TaskRecord
from common.domain.states import JobKind, JobStatus, TaskStatus
from common.errors import InvalidArgument
from services.gateway.core import Heartbeat
from services.gateway.fields import MAX_MODEL_ARGS_DEPTH
from services.gateway.requests import StoryJobRequest, VideoJobRequest
from services.gateway.views import JobView

JOB_KIND: dict[str, pb.JobKind.ValueType] = {
    JobKind.VIDEO: pb.JOB_KIND_VIDEO,
    JobKind.STORY: pb.JOB_KIND_STORY,
}
JOB_KIND_NAME = {v: k for k, v in JOB_KIND.items()}
JOB_STATUS = {s: pb.JobStatus.Value(f"JOB_STATUS_{s.name}") for s in JobStatus}
JOB_STATUS_NAME = {v: k.value for k, v in JOB_STATUS.items()}
TASK_STATUS = {s: pb.TaskStatus.Value(f"TASK_STATUS_{s.name}") for s in TaskStatus}
EVENT_TYPE = {t: pb.EventType.Value(f"EVENT_TYPE_{t.name}") for t in EventType}


def error_class(value: str) -> pb.ErrorClass.ValueType:
    if not value:
        return pb.ERROR_CLASS_UNSPECIFIED
    try:
        return pb.ErrorClass.Value(f"ERROR_CLASS_{value.upper()}")
    except ValueError:
        return pb.ERROR_CLASS_INTERNAL


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def struct(data: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(data)
    return s


def list_filters(r: pb.ListJobsRequest) -> tuple[str | None, list[str]]:
    """The kind and statuses a ListJobs request filters on; unknown enum numbers (proto3
    keeps them) are InvalidArgument, never ignored."""
    kind = None
    if r.kind:
        if r.kind not in JOB_KIND_NAME:
            raise InvalidArgument("kind", f"unknown JobKind {r.kind}")
        kind = JOB_KIND_NAME[r.kind]
    if len(r.statuses) > len(JOB_STATUS_NAME):
        raise InvalidArgument("statuses", f"at most {len(JOB_STATUS_NAME)} values")
    statuses = []
    for i, value in enumerate(r.statuses):
        if value not in JOB_STATUS_NAME:
            raise InvalidArgument(f"statuses[{i}]", f"unknown JobStatus {value}")
        statuses.append(JOB_STATUS_NAME[value])
    return kind, statuses


def model_arguments(r: pb.StartVideoJobRequest) -> dict[str, Any]:
    """The Struct as plain JSON values; a NaN or infinite number is InvalidArgument (JSON has
    none, and json_format would quietly turn them into strings)."""
    if not r.HasField("model_arguments"):
        return {}
    return _struct(r.model_arguments, "model_arguments", 1)


def _struct(struct: Struct, where: str, depth: int) -> dict[str, Any]:
    return {key: _value(value, f"{where}.{key}", depth) for key, value in struct.fields.items()}


def _value(value: Value, where: str, depth: int) -> Any:
    if depth > MAX_MODEL_ARGS_DEPTH:
        raise InvalidArgument(
            "model_arguments", f"nested deeper than {MAX_MODEL_ARGS_DEPTH} levels"
        )
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(where, "numbers must be finite (no NaN or Infinity)")
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "struct_value":
        return _struct(value.struct_value, where, depth + 1)
    if kind == "list_value":
        return [
            _value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value.list_value.values)
        ]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def video_request(r: pb.StartVideoJobRequest) -> VideoJobRequest:
    return VideoJobRequest(
        battle_arena_url=r.battle_arena_url,
        total_segments=r.total_segments,
        prompt=r.prompt,
        segment_prompts=list(r.segment_prompts),
        model=r.model,
        idempotency_key=r.idempotency_key,
        priority=r.priority,
        model_arguments=model_arguments(r),
        max_retries=r.max_retries,
        max_concurrency=r.max_concurrency,
        deadline_seconds=r.deadline_seconds,
        reuse_results=r.reuse_results,
    )


def story_request(r: pb.StartStoryJobRequest) -> StoryJobRequest:
    return StoryJobRequest(
        idea=r.idea,
        total_segments=r.total_segments,
        segments_per_set=r.segments_per_set,
        save_to_files=r.save_to_files,
        output_directory=r.output_directory,
        model=r.model,
        idempotency_key=r.idempotency_key,
        priority=r.priority,
        max_retries=r.max_retries,
        max_concurrency=r.max_concurrency,
        deadline_seconds=r.deadline_seconds,
    )


def task_message(t: TaskRecord) -> pb.Task:
    result = t.result or {}
    return pb.Task(
        index=t.index,
        status=TASK_STATUS[TaskStatus(t.status)],
        attempts=t.attempt,
        max_attempts=t.max_attempts,
        result_url=str(result.get("url", "")),
        last_error=t.last_error,
        error_class=error_class(t.error_class),
        recoverable=t.recoverable,
        provider_request_id=t.request_id or "",
        updated_at=timestamp(t.updated_at),
        next_attempt_at=timestamp(t.next_attempt_at),
        prompt=str(t.payload.get("arguments", {}).get("prompt", "")),
        segments_count=int(result.get("segments_count", 0)),
        file_path=str(result.get("file_path", "")),
        previous_results=[str((h.get("result") or {}).get("url", "")) for h in (t.history or [])],
    )


def job_message(view: JobView) -> pb.Job:
    job = view.job
    message = pb.Job(
        id=job.id,
        kind=JOB_KIND.get(job.kind, pb.JOB_KIND_UNSPECIFIED),
        status=JOB_STATUS[view.status],
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
        finished_at=timestamp(job.finished_at),
        priority=cast(pb.Priority.ValueType, job.priority),
        idempotency_key=job.idempotency_key or "",
        total_segments=view.total_segments,
        current_segment=view.finished_tasks,
        message=job.message,
        recoverable=view.status.terminal and view.recoverable,
        warning=job.warning,
        total_tasks=view.total_tasks,
        succeeded_tasks=view.succeeded,
        failed_tasks=view.failed,
        last_cursor=job.last_seq,
        retry_history=[_retry_round(r) for r in job.retry_history or []],
        max_concurrency=job.max_concurrency,
        deadline=timestamp(job.deadline_at),
        reuse_results=job.reuse_results,
    )
    if view.tasks is not None:
        message.tasks.extend(task_message(t) for t in view.tasks)
    if view.is_story:
        message.story.CopyFrom(_story(view))
    elif job.kind == JobKind.VIDEO:
        video = view.video
        message.video.CopyFrom(
            pb.VideoSpec(battle_arena_url=video.battle_arena_url, model=video.model)
        )
    return message


def _retry_round(r: dict[str, Any]) -> pb.RetryRound:
    return pb.RetryRound(
        requested_at=timestamp(r["requested_at"]), tasks=r["tasks"], max_retries=r["max_retries"]
    )


def _story(view: JobView) -> pb.StoryResult:
    p, plan = view.story, view.plan
    story = pb.StoryResult(
        idea=p.idea,
        segments_per_set=p.segments_per_set,
        save_to_files=p.save_to_files,
        output_directory=p.output_directory,
        model=p.model,
        story_title=plan.title,
        logline=plan.logline,
        characters=[
            pb.Character(name=c.name, role=c.role, description=c.description) for c in plan.people
        ],
        metadata_file=plan.metadata_file,
    )
    if view.tasks is not None:
        summary = view.story_summary()
        story.generation_summary.CopyFrom(pb.GenerationSummary(**summary["generation_summary"]))
        info = summary["retry_info"]
        story.retry_info.CopyFrom(
            pb.RetryInfo(
                can_retry=info["can_retry"],
                failed_sets=info["failed_sets"],
                retry_history=[_retry_round(r) for r in info["retry_history"]],
            )
        )
    return story


def event_message(e: EventRecord) -> pb.JobEvent:
    return pb.JobEvent(
        cursor=e.seq,
        job_id=e.job_id,
        type=EVENT_TYPE[EventType(e.type)],
        created_at=timestamp(e.created_at),
        task_index=-1 if e.task_index is None else e.task_index,
        task_status=TASK_STATUS[TaskStatus(e.task_status)]
        if e.task_status
        else pb.TASK_STATUS_UNSPECIFIED,
        job_status=JOB_STATUS[JobStatus(e.job_status)]
        if e.job_status
        else pb.JOB_STATUS_UNSPECIFIED,
        message=e.message,
        error_class=error_class(e.error_class),
        details=struct(e.details or {}),
    )


def heartbeat_message(item: Heartbeat) -> pb.WatchJobResponse:
    return pb.WatchJobResponse(
        heartbeat=pb.Heartbeat(cursor=item.cursor, sent_at=timestamp(item.at))
    )
