"""The client library against a real gateway (in-process stack), through a misbehaving proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.auth import Role, hash_entry
from common.resilience.backoff import Backoff
from orchestrator_client import (
    FailedPrecondition,
    InvalidArgument,
    JobsClient,
    NotFound,
    PermissionDenied,
    Reconnect,
    ServingStatus,
    Unauthenticated,
    Unavailable,
)
from services.simulator.app import SimulatorHandle
from tests.cli.proxy import Proxy, running_proxy
from tests.support.client import assert_cursor_order, watch_to_end
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

ARENA = "https://example.com/arena.png"
FAST = Backoff(initial=0.02, multiplier=2.0, cap=0.1, max_retries=0)


@pytest.fixture
async def stack(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    async with inproc_stack(stack_settings(tmp_path, sim)) as running:
        yield running


@pytest.fixture
async def proxy(stack: InProcStack) -> AsyncIterator[Proxy]:
    async with running_proxy(f"127.0.0.1:{stack.gateway.grpc_port}") as running:
        yield running


@pytest.mark.parametrize(
    "lost", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED], ids=lambda c: c.name
)
async def test_start_whose_answer_was_lost_is_retried_with_its_key_and_makes_one_job(
    stack: InProcStack, proxy: Proxy, lost: grpc.StatusCode
) -> None:
    proxy.faults.lose_start_answers = 1
    proxy.faults.lose_code = lost
    async with JobsClient(proxy.address, backoff=FAST) as client:
        started = await client.start_video(battle_arena_url=ARENA, total_segments=2)
        jobs = [job async for job in client.iter_jobs()]

    keys = [request.idempotency_key for request in proxy.seen.starts]
    assert len(keys) == 2 and keys[0] == keys[1] == started.idempotency_key != ""
    assert started.attempts == 2
    assert started.created is False  # the first try created it; the retry found it by its key
    assert [job.id for job in jobs] == [started.job_id]
    assert jobs[0].idempotency_key == started.idempotency_key


async def test_each_start_call_has_its_own_key_unless_given(proxy: Proxy) -> None:
    async with JobsClient(proxy.address) as client:
        first = await client.start_story(idea="A heist on the moon", total_segments=2)
        second = await client.start_story(idea="A heist on the moon", total_segments=2)
        again = await client.start_story(
            idea="A heist on the moon", total_segments=2, idempotency_key=first.idempotency_key
        )
    assert first.job_id != second.job_id and first.idempotency_key != second.idempotency_key
    assert (again.job_id, again.created, first.created) == (first.job_id, False, True)


async def test_start_gives_up_after_its_bounded_tries(proxy: Proxy) -> None:
    proxy.faults.refuse_starts = 100
    async with JobsClient(proxy.address, backoff=FAST, start_attempts=3) as client:
        with pytest.raises(Unavailable, match="gateway unreachable"):
            await client.start_video(battle_arena_url=ARENA, total_segments=1)
    assert len(proxy.seen.starts) == 3
    assert len({r.idempotency_key for r in proxy.seen.starts}) == 1


async def test_refused_start_is_not_retried_and_names_the_field(proxy: Proxy) -> None:
    async with JobsClient(proxy.address, backoff=FAST) as client:
        with pytest.raises(InvalidArgument, match="total_segments") as refused:
            await client.start_video(battle_arena_url=ARENA, total_segments=0)
    assert len(proxy.seen.starts) == 1
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_resumes_after_broken_streams_missing_nothing(
    stack: InProcStack, proxy: Proxy, sim: SimulatorHandle
) -> None:
    # Segments one after another: the job's events come at a dozen moments, so in several
    # responses however fast the stack (four at once came in too few on a fast machine).
    sim.configure(latency=0.4)
    proxy.faults.break_watches_after = [1, 2, 0, 1]
    reconnects: list[Reconnect] = []
    async with JobsClient(proxy.address, backoff=FAST) as client:
        started = await client.start_video(
            battle_arena_url=ARENA, total_segments=6, max_concurrency=1
        )
        events = [e async for e in client.watch(started.job_id, on_reconnect=reconnects.append)]
    replay = await watch_to_end(stack.stub, started.job_id)

    assert_cursor_order(events)
    assert [(e.cursor, e.message) for e in events] == [(e.cursor, e.message) for e in replay]
    assert events[-1].job_status == pb.JOB_STATUS_COMPLETED
    # (The last planned break may not happen: the job can finish within one response.)
    assert len(proxy.seen.watches) == len(reconnects) + 1 >= 4
    assert all(isinstance(r.error, Unavailable) for r in reconnects)
    # Every reconnect asked for the events after the last one delivered.
    asked = [w.after_cursor for w in proxy.seen.watches]
    assert asked[0] == 0 and asked[1:] == [r.after_cursor for r in reconnects]
    assert asked == sorted(asked) and asked[-1] > 0


async def test_watch_from_a_cursor_with_heartbeats_and_follow(
    stack: InProcStack, proxy: Proxy
) -> None:
    async with JobsClient(proxy.address) as client:
        started = await client.start_video(battle_arena_url=ARENA, total_segments=1)
        events = [e async for e in client.watch(started.job_id)]
        items = []
        async for item in client.watch(
            started.job_id,
            after_cursor=events[-2].cursor,
            follow=True,
            heartbeats=True,
            heartbeat_seconds=1,
        ):
            items.append(item)
            if isinstance(item, pb.Heartbeat):
                break
    assert [type(i) for i in items] == [pb.JobEvent, pb.Heartbeat]
    assert items[0] == events[-1]
    assert isinstance(items[1], pb.Heartbeat) and items[1].cursor == events[-1].cursor


async def test_token_is_sent_and_never_shown(proxy: Proxy) -> None:
    token = "s3cret-token-value"
    proxy.faults.required_token = token
    async with JobsClient(proxy.address, token=token) as client:
        page = await client.list(page_size=5)
    assert list(page.jobs) == []
    assert proxy.seen.metadata[-1]["authorization"] == f"Bearer {token}"
    assert token not in repr(client)

    async with JobsClient(proxy.address) as anonymous:
        with pytest.raises(Unauthenticated, match="missing"):
            await anonymous.get("x")
    wrong = "wrong-token-value"
    async with JobsClient(proxy.address, token=wrong) as client:
        with pytest.raises(PermissionDenied) as denied:
            await client.list()
    assert wrong not in str(denied.value) and wrong not in repr(denied.value)
    assert "***" in str(denied.value)


async def test_errors_carry_the_servers_message(stack: InProcStack, sim: SimulatorHandle) -> None:
    sim.configure(latency=5.0)
    async with JobsClient(f"127.0.0.1:{stack.gateway.grpc_port}") as client:
        with pytest.raises(NotFound, match="no job"):
            await client.get("0b9f5f9e-0000-4000-8000-000000000000")
        started = await client.start_video(battle_arena_url=ARENA, total_segments=1)
        with pytest.raises(FailedPrecondition):
            await client.retry_failed(started.job_id)
        cancelled = await client.cancel(started.job_id)
        assert cancelled.status == pb.JOB_STATUS_CANCELLED
        retried = await client.retry_failed(started.job_id, max_retries=1)
        assert list(retried.retried_tasks) == [1]
        assert await client.health() == ServingStatus.SERVING


async def test_list_pages_and_filters(proxy: Proxy) -> None:
    async with JobsClient(proxy.address) as client:
        ids = [
            (await client.start_video(battle_arena_url=ARENA, total_segments=1)).job_id
            for _ in range(3)
        ]
        story = await client.start_story(idea="A heist on the moon", total_segments=1)
        first = await client.list(page_size=2, kind=pb.JOB_KIND_VIDEO)
        everything = [job.id async for job in client.iter_jobs(page_size=2)]
        videos = [job.id async for job in client.iter_jobs(page_size=2, kind=pb.JOB_KIND_VIDEO)]
    assert len(first.jobs) == 2 and first.next_page_token
    assert everything == [story.job_id, *reversed(ids)]
    assert videos == list(reversed(ids))


async def test_unreachable_gateway_is_unavailable() -> None:
    async with JobsClient("127.0.0.1:9", backoff=FAST, start_attempts=2, timeout=5) as client:
        with pytest.raises(Unavailable):
            await client.get("x")
        with pytest.raises(Unavailable):
            async for _ in client.watch("x"):
                pass


async def test_tls_with_a_private_ca_and_server_name_override(
    stack: InProcStack, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    upstream = f"127.0.0.1:{stack.gateway.grpc_port}"
    async with running_proxy(upstream, server_credentials=credentials) as proxy:
        async with JobsClient(
            proxy.address, tls=True, ca_file=cert, server_name="orchestrator.test"
        ) as client:
            page = await client.list()
        assert list(page.jobs) == []
        async with JobsClient(proxy.address, backoff=FAST, start_attempts=1) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.list()


async def test_real_gateway_with_tls_and_tokens(
    tmp_path: Path, sim: SimulatorHandle, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    submit, read = "submit-token-0123456789", "read-token-0123456789"
    tokens = ",".join(
        [hash_entry("alice", Role.SUBMIT, submit), hash_entry("bob", Role.READ, read)]
    )
    settings = stack_settings(
        tmp_path, sim, auth_tokens=tokens, tls_cert_file=cert, tls_key_file=key
    )
    async with inproc_stack(settings) as stack:
        address = f"127.0.0.1:{stack.gateway.grpc_port}"
        tls = {"tls": True, "ca_file": cert, "server_name": "orchestrator.test"}
        async with JobsClient(address, token=submit, **tls) as alice:
            started = await alice.start_video(battle_arena_url=ARENA, total_segments=1)
            events = [e async for e in alice.watch(started.job_id)]
            assert events[-1].job_status == pb.JOB_STATUS_COMPLETED
        async with JobsClient(address, token=read, **tls) as bob:
            with pytest.raises(PermissionDenied):
                await bob.start_video(battle_arena_url=ARENA, total_segments=1)
            with pytest.raises(NotFound):  # alice's job is not bob's to see
                await bob.get(started.job_id)
        async with JobsClient(address, **tls) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.list()
        async with JobsClient(address, token=submit, backoff=FAST, start_attempts=1) as plain:
            with pytest.raises(Unavailable):
                await plain.list()
