"""The CLI follows a job across a gateway crash: every event exactly once, then the summary."""

from __future__ import annotations

import asyncio

import pytest

from services.cli.display import message_dict
from services.simulator.app import SimulatorHandle
from tests.cli.conftest import CliResult, assert_events_once_in_order, start_cli
from tests.support.client import watch_to_end
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


async def test_gateway_sigkilled_and_restarted_mid_watch(
    stack: Stack, sim: SimulatorHandle
) -> None:
    sim.configure(latency=2.0)
    proc = await start_cli(
        "--target", stack.env["GRPC_ADDR"], "--json", "video", "--arena",
        "https://example.com/arena.png", "-n", "4",
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        # Until the segments are running at the provider: the job is well under way.
        while sum('"TASK_STATUS_RUNNING"' in line for line in lines) < 4:
            line = (await proc.stdout.readline()).decode()
            assert line, "the CLI stopped early"
            lines.append(line)
    await stack.processes["gateway"].kill()
    await stack.start("gateway")
    async with asyncio.timeout(60):
        rest, err = await proc.communicate()
    result = CliResult(proc.returncode or 0, "".join(lines) + rest.decode(), err.decode())

    assert result.code == 0, result.stderr
    events, summary = result.events_and_summary()
    replay = await watch_to_end(stack.stub, summary["job_id"])
    assert_events_once_in_order(events)
    assert events == [message_dict(e) for e in replay]
    assert summary["status"] == "COMPLETED" and summary["last_cursor"] == len(events)
    assert "reconnecting after cursor" in result.stderr
