"""Rendering with rich: the live view of a followed job and the tables other commands print.

The live view is a `Live` region holding a progress bar (finished / total tasks) and a table of
task states; log lines (retries, deferrals, breaker changes, failures, reconnects) are printed
above it with `console.print`, so they scroll while the region stays at the bottom. On a
terminal that is not interactive (a pipe, a file) only the log lines and the final state print.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from orchestrator.v1 import jobs_pb2 as pb
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from orchestrator_client import Reconnect
from services.cli.board import (
    Board,
    LogLine,
    TaskRow,
    Tone,
    job_status_name,
    job_tone,
    task_status_name,
    task_tone,
)
from services.cli.exits import ExitCode
from services.cli.summary import render_summary, summary_dict

STYLE = {Tone.INFO: "cyan", Tone.GOOD: "green", Tone.WARN: "yellow", Tone.BAD: "bold red"}
SYMBOL = {
    pb.TASK_STATUS_QUEUED: "·",
    pb.TASK_STATUS_WAITING: "⏸",
    pb.TASK_STATUS_BLOCKED: "⧗",
    pb.TASK_STATUS_SUBMITTING: "↑",
    pb.TASK_STATUS_RUNNING: "▶",
    pb.TASK_STATUS_RETRYING: "↻",
    pb.TASK_STATUS_SUCCEEDED: "✔",
    pb.TASK_STATUS_FAILED: "✖",
    pb.TASK_STATUS_CANCELLED: "⊘",
    pb.TASK_STATUS_SKIPPED: "⤼",
}
TABLE_ROWS = 12
TICKS_PER_SECOND = 4


def message_dict(message: Message) -> dict[str, Any]:
    """proto3 JSON with the .proto field names (int64 fields are strings, as proto3 JSON says)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if isinstance(message, pb.JobEvent):
        data.setdefault("task_index", 0)  # proto3 JSON leaves out the story plan's index 0
    return data


def json_line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Sink(Protocol):
    """Where a followed job's progress goes: the live view or JSON lines."""

    wants_snapshot: bool

    def begin(self, board: Board) -> None: ...
    def event(self, board: Board, event: pb.JobEvent, line: LogLine | None) -> None: ...
    def reconnecting(self, info: Reconnect) -> None: ...
    def refresh(self, board: Board) -> None: ...
    def end(self, board: Board, job: pb.Job, code: ExitCode) -> None: ...
    def close(self) -> None: ...


class JsonSink:
    """Only JSON on stdout: one line per event, then one `{"summary": ...}` line."""

    wants_snapshot = False

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err

    def _write(self, data: dict[str, Any]) -> None:
        self.out.write(json_line(data) + "\n")
        self.out.flush()

    def begin(self, board: Board) -> None:
        pass

    def event(self, board: Board, event: pb.JobEvent, line: LogLine | None) -> None:
        self._write(message_dict(event))

    def reconnecting(self, info: Reconnect) -> None:
        self.err.write(f"orchestrator: {reconnect_text(info)}\n")
        self.err.flush()

    def refresh(self, board: Board) -> None:
        pass

    def end(self, board: Board, job: pb.Job, code: ExitCode) -> None:
        self._write({"summary": summary_dict(job, code)})

    def close(self) -> None:
        pass


class LiveSink:
    """The live view: a bar per job, the task table, and log lines scrolling above them."""

    wants_snapshot = True

    def __init__(self, console: Console) -> None:
        self.console = console
        self.board: Board | None = None
        self.progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.bar: TaskID | None = None
        # Refreshed from the event loop (a ticker task for the spinner and the clock), never
        # from rich's refresh thread: the board is only touched by the loop's thread.
        self.live = Live(
            get_renderable=self._render,
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._ticker: asyncio.Task[None] | None = None

    def begin(self, board: Board) -> None:
        self.board = board
        kind = "story" if board.story else "video"
        self.bar = self.progress.add_task(
            f"{kind} {board.job_id}", total=board.total_tasks or None, state=""
        )
        self.live.start()
        self.refresh(board)
        if self.console.is_terminal:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1 / TICKS_PER_SECOND)
            self.live.refresh()

    def event(self, board: Board, event: pb.JobEvent, line: LogLine | None) -> None:
        if line is not None:
            self.console.print(Text(line.text, style=STYLE[line.tone]), soft_wrap=True)
        self.refresh(board)

    def reconnecting(self, info: Reconnect) -> None:
        self.console.print(Text(reconnect_text(info), style=STYLE[Tone.WARN]), soft_wrap=True)

    def refresh(self, board: Board) -> None:
        if self.bar is None:
            return
        state = Text(job_status_name(board.status), style=STYLE[job_tone(board.status)])
        self.progress.update(
            self.bar,
            completed=board.finished_tasks,
            total=board.total_tasks or None,
            state=state,
        )
        if board.status in (
            pb.JOB_STATUS_COMPLETED,
            pb.JOB_STATUS_PARTIALLY_FAILED,
            pb.JOB_STATUS_FAILED,
            pb.JOB_STATUS_CANCELLED,
        ):
            self.progress.stop_task(self.bar)
        self.live.refresh()

    def end(self, board: Board, job: pb.Job, code: ExitCode) -> None:
        board.load(job)
        self.refresh(board)
        self.close()
        self.console.print(render_summary(job, code), soft_wrap=True)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.live.is_started:
            self.live.stop()
            if not self.console.is_terminal:
                self.console.line()  # rich ends the last render with a newline on terminals only

    def _render(self) -> RenderableType:
        if self.board is None:
            return Text("")
        parts: list[RenderableType] = [self.progress, task_table(self.board)]
        if self.board.warning:
            parts.append(Text(f"⚠ {self.board.warning}", style=STYLE[Tone.WARN]))
        return Group(*parts)


def reconnect_text(info: Reconnect) -> str:
    return (
        f"⟳ gateway connection lost ({info.error.message}); reconnecting after cursor"
        f" {info.after_cursor} in {info.delay:.1f} s (try {info.failures})"
    )


def task_table(board: Board, limit: int = TABLE_ROWS) -> Table:
    rows, left = board.visible_rows(limit)
    table = Table(box=None, pad_edge=False, header_style="bold", expand=True)
    table.add_column("Set" if board.story else "Segment", justify="right", min_width=7)
    table.add_column("State", no_wrap=True, min_width=12)
    table.add_column("Attempts", justify="right", min_width=8)
    table.add_column("Last error", overflow="ellipsis", no_wrap=True, ratio=3)
    table.add_column(
        "Video" if not board.story else "File", overflow="ellipsis", no_wrap=True, ratio=2
    )
    for row in rows:
        table.add_row(
            "plan" if board.story and row.index == 0 else str(row.index),
            state_text(row),
            f"{row.attempts}/{row.max_attempts}" if row.max_attempts else str(row.attempts),
            Text(_error_cell(row), style="red" if row.last_error else ""),
            row.result,
        )
    if left:
        more = ", ".join(f"{n} {state}" for state, n in sorted(left.items()))
        table.caption = f"… and {sum(left.values())} more: {more}"
    return table


def state_text(row: TaskRow) -> Text:
    name = task_status_name(row.status)
    return Text(f"{SYMBOL.get(row.status, '?')} {name}", style=STYLE[task_tone(row.status)])


def _error_cell(row: TaskRow) -> str:
    """The error's class and its end: for "POST /long/model/path -> 503: ..." the answer is
    what a narrow cell should keep (the summary shows the whole text)."""
    if not row.last_error:
        return ""
    text = row.last_error.rsplit(" -> ", 1)[-1]
    return f"{row.error_class}: {text}" if row.error_class else text
