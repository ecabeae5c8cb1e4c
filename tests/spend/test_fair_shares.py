"""Fair shares: freed provider slots go round-robin across jobs, then across owners; and a
job's own cap (max_concurrency, bounded by MAX_JOB_CONCURRENCY) holds at fal.

What fal was asked, and when it generated what, is read from the simulator's queue: the order
of accepted submits and each request's IN_PROGRESS interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.auth import Role, hash_entry
from services.simulator.app import SimulatorHandle
from tests.spend.helpers import (
    ARENA,
    Metadata,
    count,
    events_while,
    fal_requests,
    job_of,
    max_overlap,
    stack_on_rabbitmq,
)
from tests.support.client import Stub, status_name, watch_to_end

WAITING = pb.TASK_STATUS_WAITING


async def _start(
    stub: Stub, name: str, segments: int, metadata: Metadata = (), **options: int
) -> str:
    started = await stub.StartVideoJob(
        pb.StartVideoJobRequest(
            battle_arena_url=ARENA, total_segments=segments, prompt=name, **options
        ),
        metadata=metadata,
    )
    return started.job_id


async def _waiting(stub: Stub, job_id: str, n: int, metadata: Metadata = ()) -> None:
    """Until `n` of the job's tasks have found every slot taken."""
    await events_while(
        stub, job_id, lambda seen: count(seen, status=WAITING) >= n, metadata=metadata
    )


def _in_turn(labels: list[str], names: set[str]) -> None:
    """Slots went round-robin among `names`: after every grant, none of them had been granted
    more than one slot beyond any other. (A grant order within one batch is not observable:
    fal may receive those submits in either order, which this allows.)"""
    granted = dict.fromkeys(names, 0)
    for i, name in enumerate(labels):
        granted[name] += 1
        assert max(granted.values()) - min(granted.values()) <= 1, (i, labels)


async def test_freed_slots_go_round_robin_across_three_jobs(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    # Two slots. Alpha (6 segments) takes both; Bravo and Charlie (3 each) come later and
    # wait. First come, first served would finish Alpha first; fair shares serve each job in
    # turn, the later ones from the first freed slot on.
    sim.configure(latency=1.5)  # Alpha's first two hold their slots until all have queued up
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, fal_concurrency=2
    ) as stack:
        alpha = await _start(stack.stub, "Alpha", 6)
        await _waiting(stack.stub, alpha, 4)
        bravo = await _start(stack.stub, "Bravo", 3)
        charlie = await _start(stack.stub, "Charlie", 3)
        await asyncio.gather(_waiting(stack.stub, bravo, 3), _waiting(stack.stub, charlie, 3))
        sim.configure(latency=0.3)
        for job_id in (alpha, bravo, charlie):
            await watch_to_end(stack.stub, job_id)
            job = await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))
            assert status_name(job.status) == "COMPLETED", job.message

    requests = fal_requests(sim)
    labels = [job_of(r) for r in requests]
    assert len(labels) == 12 and max_overlap(requests) == 2
    assert labels[:2] == ["Alpha", "Alpha"]
    # The first two slots freed go to the two jobs holding none, not to Alpha's older tasks;
    # from then on each job gets every third slot until the small jobs are done.
    assert sorted(labels[2:4]) == ["Bravo", "Charlie"], labels
    last_small = max(i for i, name in enumerate(labels) if name != "Alpha")
    _in_turn(labels[2 : last_small + 1], {"Alpha", "Bravo", "Charlie"})
    assert labels[last_small + 1 :] == ["Alpha"] * (len(labels) - last_small - 1)


async def test_owners_share_first_then_their_jobs(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    # Alice runs two jobs, Bob one, on two slots: Bob's job gets every other slot (as much as
    # Alice's two together), and Alice's share goes round-robin between her jobs.
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
    entries = ",".join(hash_entry(name, Role.SUBMIT, t) for name, t in tokens.items())
    as_ = {name: (("authorization", f"Bearer {t}"),) for name, t in tokens.items()}
    sim.configure(latency=1.5)
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, fal_concurrency=2, auth_tokens=entries
    ) as stack:
        stub = stack.stub
        first = await _start(stub, "AliceOne", 6, as_["alice"])
        await _waiting(stub, first, 4, as_["alice"])
        second = await _start(stub, "AliceTwo", 3, as_["alice"])
        bobs = await _start(stub, "Bob", 4, as_["bob"])
        await asyncio.gather(
            _waiting(stub, second, 3, as_["alice"]), _waiting(stub, bobs, 4, as_["bob"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as hidden:  # (owners see only their jobs)
            await stub.GetJob(pb.GetJobRequest(job_id=bobs), metadata=as_["alice"])
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        sim.configure(latency=0.3)
        for job_id, owner in ((first, "alice"), (second, "alice"), (bobs, "bob")):
            await watch_to_end(stub, job_id, metadata=as_[owner])
            job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=as_[owner])
            assert status_name(job.status) == "COMPLETED", job.message

    requests = fal_requests(sim)
    labels = [job_of(r) for r in requests]
    assert len(labels) == 13 and labels[:2] == ["AliceOne", "AliceOne"], labels
    # Bob's job gets one of the first two freed slots (Alice's other job the other), then Bob
    # keeps exactly one slot while Alice's jobs wait too: each freed slot goes to the owner
    # holding fewer, so neither holds two.
    assert sorted(labels[2:4]) == ["AliceTwo", "Bob"], labels
    assert max_overlap(r for r in requests if job_of(r) == "Bob") == 1
    last_bob = max(i for i, name in enumerate(labels) if name == "Bob")
    assert last_bob < len(labels) - 2, labels  # not served after Alice's jobs
    # Alice's share goes round-robin between her jobs: AliceTwo is not held back until
    # AliceOne is done.
    alices = [name for name in labels[2 : last_bob + 1] if name != "Bob"]
    assert alices[0] == "AliceTwo", labels
    _in_turn(alices, {"AliceOne", "AliceTwo"})


async def test_a_job_cap_holds_at_fal_and_the_server_bound_clamps_it(
    tmp_path: Path, sim: SimulatorHandle, amqp_url: str, broker_prefix: str
) -> None:
    # Eight slots, so the pool never binds; the server lets one job hold at most 3.
    sim.configure(latency=0.4)
    async with stack_on_rabbitmq(
        tmp_path, sim, amqp_url, broker_prefix, fal_concurrency=8, max_job_concurrency=3
    ) as stack:
        stub = stack.stub
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # more than the pool holds
            await _start(stub, "Huge", 2, max_concurrency=9)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_concurrency" in (refused.value.details() or "")
        capped = await _start(stub, "Capped", 6, max_concurrency=2)
        clamped = await _start(stub, "Clamped", 6, max_concurrency=5)  # above the server's 3
        default = await _start(stub, "Default", 6)  # 0: the server's cap
        jobs = {}
        for job_id in (capped, clamped, default):
            await watch_to_end(stub, job_id)
            jobs[job_id] = await stub.GetJob(pb.GetJobRequest(job_id=job_id))
            assert status_name(jobs[job_id].status) == "COMPLETED", jobs[job_id].message

    assert [jobs[j].max_concurrency for j in (capped, clamped, default)] == [2, 3, 3]
    requests = fal_requests(sim)
    assert len(requests) == 18
    per_job = {name: [r for r in requests if job_of(r) == name] for name in ("Capped", "Clamped")}
    # fal never ran more of one job's segments at once than its cap, and did reach the cap
    # (six segments on eight free slots would otherwise all run at once).
    assert max_overlap(per_job["Capped"]) == 2
    assert max_overlap(per_job["Clamped"]) == 3
    assert max_overlap(r for r in requests if job_of(r) == "Default") == 3
    assert max_overlap(requests) > 3  # the jobs ran side by side: no cap held another back
