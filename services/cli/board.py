"""What the live display shows, kept without any terminal code: task rows and log lines.

The board starts from a `GetJob` snapshot; events newer than the snapshot's cursor update the
rows; every event may also make a log line (retries, deferrals, breaker changes, failures, job
status changes), older ones included, so the log tells the job's story from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf.struct_pb2 import Struct
from orchestrator.v1 import jobs_pb2 as pb

TERMINAL_TASK = frozenset(
    {
        pb.TASK_STATUS_SUCCEEDED,
        pb.TASK_STATUS_FAILED,
        pb.TASK_STATUS_CANCELLED,
        pb.TASK_STATUS_SKIPPED,
    }
)
# Rows worth seeing first when a job has more tasks than the table shows.
ROW_RANK = {
    pb.TASK_STATUS_RETRYING: 0,
    pb.TASK_STATUS_FAILED: 1,
    pb.TASK_STATUS_SUBMITTING: 2,
    pb.TASK_STATUS_RUNNING: 2,
    pb.TASK_STATUS_WAITING: 3,
    pb.TASK_STATUS_QUEUED: 4,
    pb.TASK_STATUS_BLOCKED: 5,
    pb.TASK_STATUS_CANCELLED: 6,
    pb.TASK_STATUS_SKIPPED: 6,
    pb.TASK_STATUS_SUCCEEDED: 7,
}


class Tone(StrEnum):
    """How a log line or a state reads: a word and a symbol, coloured by the display."""

    INFO = "info"
    GOOD = "good"
    WARN = "warn"
    BAD = "bad"


def task_status_name(status: pb.TaskStatus.ValueType) -> str:
    return pb.TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()


def job_status_name(status: pb.JobStatus.ValueType) -> str:
    return pb.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def error_class_name(value: pb.ErrorClass.ValueType) -> str:
    return "" if not value else pb.ErrorClass.Name(value).removeprefix("ERROR_CLASS_").lower()


def task_tone(status: pb.TaskStatus.ValueType) -> Tone:
    if status == pb.TASK_STATUS_SUCCEEDED:
        return Tone.GOOD
    if status in (pb.TASK_STATUS_FAILED, pb.TASK_STATUS_CANCELLED, pb.TASK_STATUS_SKIPPED):
        return Tone.BAD
    if status in (pb.TASK_STATUS_RETRYING, pb.TASK_STATUS_WAITING):
        return Tone.WARN
    return Tone.INFO


def job_tone(status: pb.JobStatus.ValueType) -> Tone:
    if status == pb.JOB_STATUS_COMPLETED:
        return Tone.GOOD
    if status in (pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED):
        return Tone.BAD
    if status == pb.JOB_STATUS_PARTIALLY_FAILED:
        return Tone.WARN
    return Tone.INFO


@dataclass
class TaskRow:
    index: int
    status: pb.TaskStatus.ValueType = pb.TASK_STATUS_QUEUED
    attempts: int = 0
    max_attempts: int = 0
    last_error: str = ""
    error_class: str = ""
    result: str = ""
    """Video: the result URL; story sets: the file written."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_TASK


@dataclass(frozen=True)
class LogLine:
    tone: Tone
    text: str
    cursor: int = 0


@dataclass
class Board:
    job_id: str
    kind: pb.JobKind.ValueType = pb.JOB_KIND_UNSPECIFIED
    status: pb.JobStatus.ValueType = pb.JOB_STATUS_UNSPECIFIED
    total_tasks: int = 0
    rows: dict[int, TaskRow] = field(default_factory=dict)
    snapshot_cursor: int = 0
    last_cursor: int = 0
    title: str = ""
    warning: str = ""

    @property
    def story(self) -> bool:
        return self.kind == pb.JOB_KIND_STORY

    def label(self, index: int) -> str:
        if not self.story:
            return f"segment {index}"
        return "plan" if index == 0 else f"set {index}"

    def load(self, job: pb.Job) -> None:
        """Take a GetJob snapshot as the current state."""
        self.kind, self.status, self.total_tasks = job.kind, job.status, job.total_tasks
        self.snapshot_cursor = job.last_cursor
        self.last_cursor = max(self.last_cursor, job.last_cursor)
        self.warning = job.warning
        if job.HasField("story"):
            self.title = job.story.story_title
        for task in job.tasks:
            self.rows[task.index] = TaskRow(
                index=task.index,
                status=task.status,
                attempts=task.attempts,
                max_attempts=task.max_attempts,
                last_error=task.last_error,
                error_class=error_class_name(task.error_class),
                result=task.result_url or task.file_path,
            )

    @property
    def finished_tasks(self) -> int:
        """Finished tasks among those the job counts (a story's plan is not one of them)."""
        counted = [r for i, r in self.rows.items() if not (self.story and i == 0)]
        return sum(r.finished for r in counted)

    def apply(self, event: pb.JobEvent) -> LogLine | None:
        """Record the event; the log line it makes, if any."""
        self.last_cursor = max(self.last_cursor, event.cursor)
        if event.cursor > self.snapshot_cursor:
            self._update(event)
        return self._log_line(event)

    def _update(self, event: pb.JobEvent) -> None:
        details = _details(event.details)
        if event.type == pb.EVENT_TYPE_JOB_CREATED:
            total = details.get("total_tasks")
            if isinstance(total, float | int):
                self.total_tasks = int(total)
        if event.job_status:
            self.status = event.job_status
        if event.type == pb.EVENT_TYPE_STORY_PLANNED:
            self.title = str(details.get("title", self.title))
        if event.type == pb.EVENT_TYPE_BREAKER:
            state = details.get("state")
            self.warning = "" if state == "closed" else event.message
        if event.type != pb.EVENT_TYPE_TASK_STATUS or event.task_index < 0:
            return
        row = self.rows.setdefault(event.task_index, TaskRow(event.task_index))
        row.status = event.task_status
        if isinstance(attempt := details.get("attempt"), float | int):
            # RETRYING carries the number of the attempt to come: not started yet.
            started = int(attempt) - (event.task_status == pb.TASK_STATUS_RETRYING)
            row.attempts = max(row.attempts, started)
        if error := details.get("error"):
            row.last_error = str(error)
            row.error_class = error_class_name(event.error_class)
        if result := details.get("result_url") or details.get("file_path"):
            row.result = str(result)

    def _log_line(self, event: pb.JobEvent) -> LogLine | None:
        where = "job" if event.task_index < 0 else self.label(event.task_index)
        text = f"#{event.cursor} {where}: {event.message}"
        kind = event.type
        if kind == pb.EVENT_TYPE_TASK_STATUS:
            if event.task_status == pb.TASK_STATUS_RETRYING:
                return LogLine(Tone.WARN, f"↻ retry   {text}", event.cursor)
            if event.task_status == pb.TASK_STATUS_FAILED:
                return LogLine(Tone.BAD, f"✖ failed  {text}", event.cursor)
            if event.task_status in (pb.TASK_STATUS_CANCELLED, pb.TASK_STATUS_SKIPPED):
                return LogLine(Tone.BAD, f"✖ {task_status_name(event.task_status)} {text}")
            return None
        if kind == pb.EVENT_TYPE_TASK_DEFERRED:
            return LogLine(Tone.WARN, f"⏸ defer   {text}", event.cursor)
        if kind == pb.EVENT_TYPE_BREAKER:
            state = str(_details(event.details).get("state", ""))
            tone = Tone.GOOD if state == "closed" else Tone.WARN
            return LogLine(tone, f"⚡ breaker {text}", event.cursor)
        if kind in (pb.EVENT_TYPE_RETRY_REQUESTED, pb.EVENT_TYPE_CANCEL_REQUESTED):
            return LogLine(Tone.INFO, f"• request {text}", event.cursor)
        if kind == pb.EVENT_TYPE_STORY_PLANNED:
            return LogLine(Tone.GOOD, f"✎ planned {text}", event.cursor)
        if kind == pb.EVENT_TYPE_JOB_STATUS:
            name = job_status_name(event.job_status)
            return LogLine(job_tone(event.job_status), f"● {name:<8} {text}", event.cursor)
        return None

    def visible_rows(self, limit: int) -> tuple[list[TaskRow], dict[str, int]]:
        """At most `limit` rows, the most telling first, shown in index order; and a count by
        state of those left out."""
        rows = list(self.rows.values())
        if len(rows) <= limit:
            return sorted(rows, key=lambda r: r.index), {}
        ranked = sorted(rows, key=lambda r: (ROW_RANK.get(r.status, 9), r.index))
        shown, hidden = ranked[:limit], ranked[limit:]
        left: dict[str, int] = {}
        for row in hidden:
            name = task_status_name(row.status)
            left[name] = left.get(name, 0) + 1
        return sorted(shown, key=lambda r: r.index), left


def _details(details: Struct) -> dict[str, object]:
    return dict(details.items())
