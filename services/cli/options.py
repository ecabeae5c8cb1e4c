"""The global options, read once by the top-level callback and handed to every command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchestrator.v1 import jobs_pb2 as pb
from rich.console import Console

from orchestrator_client import ClientError, JobsClient
from services.cli import exits
from services.cli.exits import ExitCode


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"

    @property
    def proto(self) -> pb.Priority.ValueType:
        return pb.Priority.Value(f"PRIORITY_{self.name.upper()}")


class Kind(StrEnum):
    video = "video"
    story = "story"

    @property
    def proto(self) -> pb.JobKind.ValueType:
        return pb.JobKind.Value(f"JOB_KIND_{self.name.upper()}")


class Status(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    partially_failed = "partially_failed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def proto(self) -> pb.JobStatus.ValueType:
        return pb.JobStatus.Value(f"JOB_STATUS_{self.name.upper()}")


class UsageError(Exception):
    """A command-line value that cannot work (a missing file, a malformed KEY=VALUE)."""


@dataclass(frozen=True)
class Globals:
    target: str
    token: str | None = field(repr=False)
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    server_name: str | None
    timeout: float
    json: bool
    http_url: str

    @property
    def out(self) -> Console:
        return Console(highlight=False)

    @property
    def err(self) -> Console:
        return Console(stderr=True, highlight=False)

    def client(self) -> JobsClient:
        return JobsClient(
            self.target,
            token=self.token,
            tls=self.tls,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            server_name=self.server_name,
            timeout=self.timeout,
        )

    def run(self, work: Callable[[JobsClient], Awaitable[ExitCode]]) -> ExitCode:
        """Run `work` with an open client; errors become a message on stderr and an exit code."""
        try:
            return asyncio.run(self._guarded(work))
        except KeyboardInterrupt:
            self.error("stopped; the job itself goes on", ExitCode.INTERRUPTED, "INTERRUPTED")
            return ExitCode.INTERRUPTED

    async def _guarded(self, work: Callable[[JobsClient], Awaitable[ExitCode]]) -> ExitCode:
        try:
            async with self.client() as client:
                return await work(client)
        except ClientError as exc:
            code = exits.for_error(exc)
            self.error(exc.message, code, exc.code.name if exc.code else type(exc).__name__)
            return code
        except (UsageError, ValueError) as exc:
            self.error(str(exc), ExitCode.USAGE, "USAGE")
            return ExitCode.USAGE

    def error(self, message: str, code: ExitCode, name: str) -> None:
        if self.token:
            message = message.replace(self.token, "***")
        if self.json:
            data: dict[str, Any] = {"code": name, "message": message, "exit_code": int(code)}
            sys.stderr.write(json.dumps({"error": data}) + "\n")
        else:
            self.err.print(f"orchestrator: {name}: {message}", markup=False)
