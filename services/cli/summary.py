"""The end of a followed job: a summary as a dict (the `--json` last line) and for people."""

from __future__ import annotations

from typing import Any

from orchestrator.v1 import jobs_pb2 as pb
from rich.console import Group, RenderableType
from rich.text import Text

from services.cli.board import (
    TERMINAL_TASK,
    error_class_name,
    job_status_name,
    task_status_name,
)
from services.cli.exits import ExitCode

FAILED_TASK = frozenset({pb.TASK_STATUS_FAILED, pb.TASK_STATUS_CANCELLED, pb.TASK_STATUS_SKIPPED})


def kind_name(kind: pb.JobKind.ValueType) -> str:
    return pb.JobKind.Name(kind).removeprefix("JOB_KIND_").lower()


def _label(job: pb.Job, index: int) -> str:
    if job.kind != pb.JOB_KIND_STORY:
        return f"segment {index}"
    return "plan" if index == 0 else f"set {index}"


def summary_dict(job: pb.Job, code: ExitCode) -> dict[str, Any]:
    """What a script needs from a finished job, in plain JSON types."""
    summary: dict[str, Any] = {
        "job_id": job.id,
        "kind": kind_name(job.kind),
        "status": job_status_name(job.status),
        "exit_code": int(code),
        "message": job.message,
        "warning": job.warning,
        "recoverable": job.recoverable,
        "total_tasks": job.total_tasks,
        "succeeded_tasks": job.succeeded_tasks,
        "failed_tasks": job.failed_tasks,
        "last_cursor": job.last_cursor,
        "failed": [
            {
                "index": t.index,
                "status": task_status_name(t.status),
                "error_class": error_class_name(t.error_class),
                "last_error": t.last_error,
                "attempts": t.attempts,
                "recoverable": t.recoverable,
            }
            for t in job.tasks
            if t.status in FAILED_TASK
        ],
    }
    if job.kind == pb.JOB_KIND_STORY:
        story = job.story
        summary["story"] = {
            "title": story.story_title,
            "logline": story.logline,
            "output_directory": story.output_directory,
            "metadata_file": story.metadata_file,
            "files": [
                {"set": t.index, "file_path": t.file_path, "segments": t.segments_count}
                for t in job.tasks
                if t.index > 0 and t.file_path
            ],
        }
    else:
        summary["results"] = [
            {"segment": t.index, "url": t.result_url} for t in job.tasks if t.result_url
        ]
    return summary


def render_summary(job: pb.Job, code: ExitCode) -> RenderableType:
    status = job_status_name(job.status)
    mark, style = {
        pb.JOB_STATUS_QUEUED: ("…", "bold cyan"),
        pb.JOB_STATUS_RUNNING: ("…", "bold cyan"),
        pb.JOB_STATUS_COMPLETED: ("✔", "bold green"),
        pb.JOB_STATUS_PARTIALLY_FAILED: ("▲", "bold yellow"),
    }.get(job.status, ("✖", "bold red"))
    lines: list[RenderableType] = [
        Text(f"{mark} job {job.id} {status}: {job.message}", style=style),
    ]
    if job.kind == pb.JOB_KIND_STORY:
        lines += _story_lines(job)
    else:
        results = [t for t in job.tasks if t.result_url]
        if results:
            lines.append(Text("Videos:", style="bold"))
            lines += [Text(f"  segment {t.index:>3}  {t.result_url}") for t in results]
    failed = [t for t in job.tasks if t.status in FAILED_TASK]
    if failed:
        lines.append(Text("Not done:", style="bold"))
        for t in failed:
            why = f"{error_class_name(t.error_class)}: {t.last_error}" if t.last_error else ""
            lines.append(
                Text(f"  {_label(job, t.index):>11}  {task_status_name(t.status)}  {why}".rstrip())
            )
    if job.status in (
        pb.JOB_STATUS_PARTIALLY_FAILED,
        pb.JOB_STATUS_FAILED,
        pb.JOB_STATUS_CANCELLED,
    ) and all(t.status in TERMINAL_TASK for t in job.tasks):
        hint = f"Re-run what failed (successful tasks are kept): orchestrator retry {job.id}"
        lines.append(Text(hint, style="dim"))
    if code != ExitCode.OK:
        lines.append(Text(f"exit code {int(code)} ({code.name})", style="dim"))
    return Group(*lines)


def _story_lines(job: pb.Job) -> list[RenderableType]:
    story = job.story
    lines: list[RenderableType] = []
    if story.story_title:
        lines.append(Text(f"Title: {story.story_title}", style="bold"))
    if story.logline:
        lines.append(Text(f"  {story.logline}", style="italic"))
    files = [t for t in job.tasks if t.index > 0 and t.file_path]
    if story.metadata_file or files:
        lines.append(Text("Files (under the server's OUTPUT_ROOT):", style="bold"))
        if story.metadata_file:
            lines.append(Text(f"  metadata  {story.metadata_file}"))
        lines += [
            Text(f"  set {t.index:>5}  {t.file_path} ({t.segments_count} segments)") for t in files
        ]
    return lines
