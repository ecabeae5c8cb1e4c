"""Fixtures for the CLI tests: the CLI as a real subprocess, stacks to run it against."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.broker import Topology, delete_topology
from common.domain.kinds import BUILTIN_KINDS
from services.simulator.app import SimulatorHandle
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.procs import ROOT
from tests.support.stack import Stack, running_stack

ALL_SERVICES = ("gateway", "video_worker", "story_worker")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def events_and_summary(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """`--json` output of a followed job: the event lines, then the summary line."""
        lines = self.json_lines()
        assert lines and "summary" in lines[-1], self.stdout[-2000:] + self.stderr[-2000:]
        events = lines[:-1]
        assert all("cursor" in e for e in events), "a line that is not an event"
        return events, lines[-1]["summary"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update({"COLUMNS": "120", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


async def start_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        cwd=ROOT,
        env=cli_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> CliResult:
    """Run `python -m services.cli ARGS` to its end."""
    proc = await start_cli(*args, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"CLI {args} did not finish:\n{out.decode()}\n{err.decode()}"
        ) from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def assert_events_once_in_order(events: list[dict[str, Any]]) -> None:
    """Cursors 1, 2, ... N: in order, none missing, none twice (int64 prints as a string)."""
    cursors = [int(e["cursor"]) for e in events]
    assert cursors == list(range(1, len(cursors) + 1)), cursors


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for the name `orchestrator.test` (made by openssl)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=orchestrator.test",
         "-addext", "subjectAltName=DNS:orchestrator.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def broker_prefix(amqp_url: str, queue_prefix: str) -> AsyncIterator[str]:
    """A queue prefix whose queues and exchanges are deleted after the test."""
    yield queue_prefix
    await delete_topology(amqp_url, Topology(prefix=queue_prefix, queues=BUILTIN_KINDS.queues))


@pytest.fixture
async def stack(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> AsyncIterator[Stack]:
    """Gateway, video worker and story worker as processes on RabbitMQ."""
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=ALL_SERVICES
    ) as running:
        yield running


@pytest.fixture
async def inproc(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    """The stack in the test's loop, for error paths where processes are not the point."""
    async with inproc_stack(stack_settings(tmp_path, sim)) as running:
        yield running
