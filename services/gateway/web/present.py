"""What the pages show of a job: words, icons and figures derived from a `JobView`.

Status is never shown by colour alone: each one has a word and an icon (the CSS class adds
colour on top). The same labels go to the page's script as JSON, so a live update shows a
status exactly as the server would have rendered it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common.domain.kinds import KindRegistry
from common.domain.records import TaskRecord
from common.domain.states import JobStatus, TaskStatus
from services.gateway.views import JobView

# status -> (icon, word); icons are decoration (aria-hidden), the word is the meaning.
JOB_LABELS: dict[str, tuple[str, str]] = {
    JobStatus.QUEUED: ("◷", "queued"),
    JobStatus.RUNNING: ("▶", "running"),
    JobStatus.COMPLETED: ("✔", "completed"),
    JobStatus.PARTIALLY_FAILED: ("⚠", "partially failed"),
    JobStatus.FAILED: ("✖", "failed"),
    JobStatus.CANCELLED: ("⊘", "cancelled"),
}
TASK_LABELS: dict[str, tuple[str, str]] = {
    TaskStatus.QUEUED: ("◷", "queued"),
    TaskStatus.WAITING: ("⏸", "waiting for a slot"),
    TaskStatus.BLOCKED: ("⧗", "blocked"),
    TaskStatus.SUBMITTING: ("↗", "submitting"),
    TaskStatus.RUNNING: ("▶", "running"),
    TaskStatus.RETRYING: ("↻", "retrying"),
    TaskStatus.SUCCEEDED: ("✔", "succeeded"),
    TaskStatus.FAILED: ("✖", "failed"),
    TaskStatus.CANCELLED: ("⊘", "cancelled"),
    TaskStatus.SKIPPED: ("⤼", "skipped"),
}
# Outcomes a user should be warned about (RetryFailed re-runs them).
NEEDS_ATTENTION = (TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED)


def labels_json() -> dict[str, Any]:
    """The labels as the page's script reads them."""
    return {"job": JOB_LABELS, "task": TASK_LABELS}


def when(seconds: float | None) -> str:
    """A timestamp as UTC text (the same on every machine; the page shows it as is)."""
    if seconds is None:
        return ""
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class TaskRow:
    """One cell of the job page's grid."""

    task: TaskRecord
    noun: str  # "segment", "set", "plan"
    produces_output: bool

    @property
    def status(self) -> TaskStatus:
        return TaskStatus(self.task.status)

    @property
    def title(self) -> str:
        if not self.produces_output:
            return f"Story {self.noun}"
        return f"{self.noun.capitalize()} {self.task.index}"

    @property
    def prompt(self) -> str:
        return str(self.task.payload.get("arguments", {}).get("prompt", ""))

    @property
    def span(self) -> str:
        """Which script segments a story set covers ("segments 11-20")."""
        first = self.task.payload.get("first_segment")
        last = self.task.payload.get("last_segment")
        if first is None or last is None:
            return ""
        return f"segment {first}" if first == last else f"segments {first}-{last}"

    @property
    def result_url(self) -> str:
        return str((self.task.result or {}).get("url", ""))

    @property
    def attention(self) -> bool:
        return self.status in NEEDS_ATTENTION

    @property
    def version(self) -> str:
        """Changes whenever the cell would render differently (for the live refresh)."""
        t = self.task
        return f"{t.status}:{t.attempt}:{t.updated_at}"


@dataclass(frozen=True)
class JobPage:
    """A job as its page renders it."""

    view: JobView
    rows: list[TaskRow]

    @classmethod
    def of(cls, view: JobView, kinds: KindRegistry) -> JobPage:
        rows = []
        for task in sorted(view.tasks or (), key=lambda t: (t.kind in view.output_kinds, t.index)):
            spec = kinds.get(task.kind)
            rows.append(
                TaskRow(
                    task,
                    spec.noun if spec else "task",
                    task.kind in view.output_kinds,
                )
            )
        return cls(view, rows)

    @property
    def job(self) -> Any:
        return self.view.job

    @property
    def status(self) -> JobStatus:
        return self.view.status

    @property
    def outputs(self) -> list[TaskRow]:
        return [r for r in self.rows if r.produces_output]

    @property
    def noun(self) -> str:
        return self.outputs[0].noun if self.outputs else "task"

    @property
    def attention(self) -> list[TaskRow]:
        return [r for r in self.rows if r.attention]

    @property
    def not_recoverable(self) -> list[TaskRow]:
        return [
            r for r in self.attention if r.status is TaskStatus.FAILED and not r.task.recoverable
        ]

    @property
    def retriable(self) -> bool:
        return self.status.terminal and bool(self.attention)

    @property
    def cancellable(self) -> bool:
        return not self.status.terminal

    def regenerable(self, row: TaskRow) -> bool:
        """A finished job's succeeded segment or set may be generated again (a re-roll)."""
        return self.status.terminal and row.produces_output and row.status is TaskStatus.SUCCEEDED

    @property
    def videos(self) -> list[TaskRow]:
        return [r for r in self.outputs if r.status is TaskStatus.SUCCEEDED and r.result_url]

    @property
    def story_sets(self) -> list[TaskRow]:
        return self.outputs if self.view.is_story else []


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
