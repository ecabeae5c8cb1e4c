"""One logging setup for every process: human-readable lines or JSON lines, the job, task and
attempt on every line about one, step names as events, and no flood of repeated errors.

    LOG_FORMAT=text  2026-11-30 17:01:02,345 INFO video_worker job=3f2a… task=4 attempt=2
                     submit: submitted to fal as request r-81 (0.21s)
    LOG_FORMAT=json  {"ts": "...", "level": "INFO", "service": "video_worker", "logger": "...",
                      "event": "submit", "job_id": "3f2a…", "task_index": 4, "attempt": 2,
                      "message": "...", "request_id": "r-81", "seconds": 0.21}

Events name the steps of a generation (the original design's words): `start` (a request and its
parameters), `submit`, `status_check`, `success`, `retry` (with its delay), `wait` (a deferral or
a slot), `warning`, `fatal`, `session` (a lifecycle operation: connect, drain, takeover), and
`job_done` with the job's total processing time. Pass them as `extra={"event": ..., **fields}`.

Repeated warnings and errors (same logger and message template) are let through a few times a
minute; the rest are counted and summed up in one line, so a client cannot fill the disk by
repeating a bad request. Secrets never reach a log line: settings hold them as SecretStr and
provider errors are scrubbed before they are raised.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

# Bound per asyncio task (each message is handled in its own task), shown on every line.
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
task_index_var: ContextVar[int | None] = ContextVar("task_index", default=None)
attempt_var: ContextVar[int | None] = ContextVar("attempt", default=None)

QUIET_LIBRARIES = (
    "aio_pika",
    "aiormq",
    "httpx",
    "httpcore",
    "alembic",
    "openai",
    "fal_client",
    "aiohttp.access",
)
# LogRecord attributes that are not a caller's extra fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "event"}
REPEATS_PER_WINDOW = 5
WINDOW_SECONDS = 60.0


def bind_task(job_id: str | None, index: int | None, attempt: int | None = None) -> None:
    """Attach a job, task and attempt to every log line of the current asyncio task."""
    job_id_var.set(job_id)
    task_index_var.set(index)
    attempt_var.set(attempt)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The caller's extra fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = getattr(record, "job_id", None) or job_id_var.get()
        record.task_index = _first(getattr(record, "task_index", None), task_index_var.get())
        record.attempt = _first(getattr(record, "attempt", None), attempt_var.get())
        record.event = getattr(record, "event", None) or ""
        return True


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


class RepeatLimit(logging.Filter):
    """Let `limit` records per (logger, template) through per window at WARNING and above."""

    def __init__(
        self,
        limit: int = REPEATS_PER_WINDOW,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        started, count = self._seen.get(key, (now, 0))
        if now - started >= self.window:
            if count > self.limit:
                record.msg = f"{record.msg} [{count - self.limit} similar lines suppressed]"
            started, count = now, 0
        self._seen[key] = (started, count + 1)
        if len(self._seen) > 10_000:
            self._seen.clear()
        return count < self.limit


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + service + " %(name)s %(where)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        where = []
        if record.job_id:  # type: ignore[attr-defined]
            where.append(f"job={record.job_id}")  # type: ignore[attr-defined]
        if record.task_index is not None:  # type: ignore[attr-defined]
            where.append(f"task={record.task_index}")  # type: ignore[attr-defined]
        if record.attempt is not None:  # type: ignore[attr-defined]
            where.append(f"attempt={record.attempt}")  # type: ignore[attr-defined]
        if record.event:  # type: ignore[attr-defined]
            where.append(f"{record.event}:")  # type: ignore[attr-defined]
        record.where = " ".join(where) + (" " if where else "")
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "event": record.event or None,  # type: ignore[attr-defined]
            "job_id": record.job_id,  # type: ignore[attr-defined]
            "task_index": record.task_index,  # type: ignore[attr-defined]
            "attempt": record.attempt,  # type: ignore[attr-defined]
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            if key not in line and key not in ("where",):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(level: str, service: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context())
    handler.addFilter(RepeatLimit())
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at WARNING unless asked for DEBUG.
    if level.upper() != "DEBUG":
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
