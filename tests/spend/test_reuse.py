"""Result reuse: with reuse_results, a segment whose model and arguments equal a succeeded one
(within REUSE_TTL) takes its result without a provider call, its event says so and the
worker's orchestrator_reused_results_total counts it; a changed argument is a call, and so is
every segment of a job that did not ask for reuse."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from google.protobuf.struct_pb2 import Struct
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.spend.helpers import ARENA, fal_requests, prompt_of, stack_on_rabbitmq
from tests.support.client import Stub, status_name, watch_to_end
from tests.support.procs import free_port
from tests.support.stack import Stack, running_stack

SAVED = re.compile(r'^orchestrator_reused_results_total\{kind="video\.segment"\} (\S+)$', re.M)


async def _saved(http: httpx.AsyncClient) -> float:
    """What the video worker's metrics endpoint says it saved so far."""
    found = SAVED.search((await http.get("/metrics")).text)
    return float(found.group(1)) if found else 0.0


async def _run(
    stub: Stub, prompts: list[str], *, reuse: bool, arguments: dict[str, object] | None = None
) -> tuple[pb.Job, list[pb.JobEvent]]:
    struct = Struct()
    struct.update(arguments or {})
    started = await stub.StartVideoJob(
        pb.StartVideoJobRequest(
            battle_arena_url=ARENA,
            segment_prompts=prompts,
            reuse_results=reuse,
            model_arguments=struct,
        )
    )
    events = await watch_to_end(stub, started.job_id)
    job = await stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
    assert status_name(job.status) == "COMPLETED", job.message
    return job, events


def _asked(sim: SimulatorHandle) -> list[str]:
    return [prompt_of(r) for r in fal_requests(sim)]


@asynccontextmanager
async def _stack(
    tmp_path: Path, amqp_url: str, prefix: str, sim: SimulatorHandle, **env: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """The stack, and a client of the video worker's metrics endpoint."""
    metrics = f"127.0.0.1:{free_port()}"
    env = {"METRICS_ADDR": metrics, **env}
    async with (
        running_stack(tmp_path, amqp_url, prefix, sim, env=env) as stack,
        httpx.AsyncClient(base_url=f"http://{metrics}") as http,
    ):
        yield stack, http


@pytest.mark.e2e
async def test_an_identical_segment_takes_the_earlier_result_and_a_changed_one_is_paid(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    async with _stack(tmp_path, amqp_url, broker_prefix, sim) as (stack, http):
        stub = stack.stub
        first, _ = await _run(stub, ["Lion", "Tiger"], reuse=False)
        assert _asked(sim) == ["Lion", "Tiger"]
        saved_before = await _saved(http)

        # Same model and arguments for "Lion": its result, no call; "Bear" is new: a call.
        second, events = await _run(stub, ["Lion", "Bear"], reuse=True)
        assert _asked(sim) == ["Lion", "Tiger", "Bear"]
        assert second.tasks[0].result_url == first.tasks[0].result_url
        assert second.tasks[1].result_url not in {t.result_url for t in first.tasks}
        (reused,) = [
            e for e in events if e.task_status == pb.TASK_STATUS_SUCCEEDED and e.task_index == 1
        ]
        assert reused.message == (f"reused the result of job {first.id} task 1 (no provider call)")
        assert dict(reused.details["reused_from"]) == {"job_id": first.id, "index": 1}
        assert await _saved(http) == saved_before + 1

        # One model argument changed: another input, so a call.
        await _run(stub, ["Lion"], reuse=True, arguments={"duration": "10"})
        assert _asked(sim) == ["Lion", "Tiger", "Bear", "Lion"]
        # Reuse not asked for: always a call, even for an input fal already generated.
        await _run(stub, ["Tiger"], reuse=False)
        assert _asked(sim) == ["Lion", "Tiger", "Bear", "Lion", "Tiger"]
        assert await _saved(http) == saved_before + 1


async def test_a_result_older_than_reuse_ttl_is_not_reused(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    ttl = 1.0
    async with (
        stack_on_rabbitmq(tmp_path, sim, amqp_url, broker_prefix, reuse_ttl=ttl) as stack,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        saved = await _saved(http)  # (this process's counters: the worker runs in it too)
        first, events = await _run(stack.stub, ["Lion"], reuse=False)
        # The earlier result must be older than the TTL: that is the wall clock's doing.
        finished = events[-1].created_at.ToMicroseconds() / 1e6
        await asyncio.sleep(max(0.0, finished + ttl + 0.1 - time.time()))
        second, _ = await _run(stack.stub, ["Lion"], reuse=True)
        assert _asked(sim) == ["Lion", "Lion"]
        assert second.tasks[0].result_url != first.tasks[0].result_url
        assert await _saved(http) == saved
