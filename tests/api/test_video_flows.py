"""Video-job flows through the gateway's real servers: seed HTTP API, cancel, webhooks, outbox."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.settings import Settings
from common.store import jobs as job_store
from services.gateway.requests import Limits, VideoJobRequest, plan_video_job
from services.simulator.app import SimulatorHandle
from tests.support.client import events_until, running_tasks, status_name, watch_to_end
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.procs import free_port

ARENA = "https://example.com/arena.png"


def webhook_settings(tmp_path: Path, sim: SimulatorHandle, **overrides: object) -> Settings:
    """A stack whose submits name a webhook on its own HTTP port (fal calls back there)."""
    port = free_port()
    return stack_settings(
        tmp_path,
        sim,
        http_addr=f"127.0.0.1:{port}",
        public_http_url=f"http://127.0.0.1:{port}",
        webhook_secret="test-webhook-secret",
        **overrides,
    )


async def one_video_job(stack: InProcStack, segments: int, timeout: float) -> tuple[pb.Job, float]:
    """Start a job of `segments` and watch it to its end: the job, and the seconds it took."""
    started = time.monotonic()
    request = pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=segments)
    job_id = (await stack.stub.StartVideoJob(request)).job_id
    await watch_to_end(stack.stub, job_id, timeout=timeout)
    elapsed = time.monotonic() - started
    return await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id)), elapsed


async def test_seed_video_api_start_then_status(tmp_path: Path, sim: SimulatorHandle) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        started = await http.post(
            "/api/generate-video", json={"action": "start", "battleArenaUrl": ARENA}
        )
        assert started.status_code == 200
        body = started.json()
        assert set(body) == {"sessionId", "totalSegments", "message"}
        # The seed's default when no count is given is rejected with the seed's field name.
        assert body["totalSegments"] > 0
        await watch_to_end(stack.stub, body["sessionId"])
        status = await http.post(
            "/api/generate-video", json={"action": "status", "sessionId": body["sessionId"]}
        )
        assert status.json() == {
            "status": "completed",
            "currentSegment": body["totalSegments"],
            "totalSegments": body["totalSegments"],
            "message": f"{body['totalSegments']} of {body['totalSegments']} segments succeeded",
            "recoverable": False,
            "warning": None,
        }
        bad = await http.post(
            "/api/generate-video", json={"action": "start", "battleArenaUrl": "ftp://x"}
        )
        assert bad.status_code == 400
        assert bad.json()["field"] == "battleArenaUrl"
        missing = await http.post(
            "/api/generate-video", json={"action": "status", "sessionId": "nope"}
        )
        assert missing.status_code == 404


async def test_seed_video_api_regenerates_a_chosen_segment_and_keeps_its_old_result(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url) as http,
    ):
        started = await http.post(
            "/api/generate-video",
            json={"action": "start", "battleArenaUrl": ARENA, "totalSegments": 3},
        )
        job_id = started.json()["sessionId"]
        await watch_to_end(stack.stub, job_id)
        before = {
            t.index: t for t in (await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))).tasks
        }

        async def retry(**fields: object) -> httpx.Response:
            body = {"action": "retry", "sessionId": job_id, **fields}
            return await http.post("/api/generate-video", json=body)

        refused = await retry(taskIndices=[2])  # succeeded: only with regenerate
        assert refused.status_code in (400, 409) and "regenerate" in refused.text
        unknown = await retry(taskIndices=[9], regenerate=True)
        assert unknown.status_code == 400 and unknown.json()["field"] == "taskIndices"
        assert (await retry(taskIndices="2")).json()["field"] == "taskIndices"  # not a list
        many = await retry(taskIndices=[1] * 50, regenerate=True)
        assert many.status_code == 400 and many.json()["field"] == "taskIndices"
        blind = await retry(regenerate=True)  # regenerate what? name the tasks
        assert blind.status_code == 400 and blind.json()["field"] == "regenerate"
        answer = await retry(taskIndices=[2], regenerate=True)
        assert answer.status_code == 200, answer.text
        assert answer.json()["retried"] == [2]
        await watch_to_end(stack.stub, job_id)
        after = {
            t.index: t for t in (await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))).tasks
        }
        assert after[2].result_url != before[2].result_url
        assert after[1].result_url == before[1].result_url  # the others are left alone
        assert after[3].result_url == before[3].result_url
        assert sim.stats(with_logs=False)["accepted_requests"] == 4


async def test_cancel_reaches_fal_for_requests_in_flight(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    sim.configure(latency=30)
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        started = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=3)
        )
        await events_until(stack.stub, started.job_id, lambda seen: len(running_tasks(seen)) == 3)
        job = await stack.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id))
        assert status_name(job.status) == "CANCELLED"
        assert all(t.status == pb.TASK_STATUS_CANCELLED for t in job.tasks)
        await events_until(
            stack.stub,
            started.job_id,
            lambda seen: sum("cancellation requested at fal" in e.message for e in seen) == 3,
            follow=True,
        )
    assert sim.stats(with_logs=False)["calls"]["cancel"] == 3


@pytest.mark.parametrize(("payload", "fetched"), [(True, 0), (False, 2)])
async def test_a_webhook_records_the_result_it_carried_or_has_it_fetched_once(
    tmp_path: Path, sim: SimulatorHandle, payload: bool, fetched: int
) -> None:
    # A call-back that carries the result is taken at its word (it is signed), and the slot it
    # frees goes to the next segment (one slot for two); one without (fal's `payload_error`)
    # makes the worker fetch the result, once.
    sim.configure(latency=0.2, webhook_repeats=2, webhook_payload=payload)
    # Polls every 60 s: only the webhook can finish this job quickly.
    settings = webhook_settings(tmp_path, sim, fal_poll_interval=60, fal_concurrency=1)
    async with inproc_stack(settings) as stack:
        job, elapsed = await one_video_job(stack, 2, timeout=20)
    assert status_name(job.status) == "COMPLETED"
    assert all(t.result_url.endswith(".mp4") for t in job.tasks)
    assert elapsed < 10
    stats = sim.stats(with_logs=False)
    assert stats["webhooks_sent"] == 4  # two requests, each called back twice
    assert stats["calls"].get("result", 0) == fetched  # repeated call-backs fetch nothing
    assert stats["calls"].get("status", 0) == 0  # a call-back goes straight to the result


async def test_a_webhooks_failed_result_fetch_is_made_again_after_its_retry_after(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    # Polls every 60 s: the webhook's fetch of the result is refused once (429, Retry-After
    # 1 s) and made again after that second, not left to the next poll a minute later.
    sim.configure(
        latency=0.2,
        webhook_payload=False,
        rules=[{"endpoint": "result", "fault": "429", "retry_after": 1, "times": 1}],
    )
    settings = webhook_settings(tmp_path, sim, fal_poll_interval=60, max_retry_after=30)
    async with inproc_stack(settings) as stack:
        job, _ = await one_video_job(stack, 1, timeout=15)
    assert status_name(job.status) == "COMPLETED"
    stats = sim.stats(with_logs=False)
    assert (stats["rate_limited"]["result"], stats["calls"]["result"]) == (1, 2)
    assert stats["calls"].get("status", 0) == 0  # the webhook said it finished


async def test_refused_result_fetches_go_on_in_one_loop_that_keeps_to_the_retry_after(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    # Webhooks called back twice, and a poll chain every 0.3 s too: four fetches of the
    # result are refused in turn with Retry-After 1 s. One loop fetches it again after each
    # second (the job ends 4 s or more after the generation); the webhooks' one-off polls and
    # the chain each fetching on their own would get through the refusals sooner.
    sim.configure(
        latency=0.2,
        webhook_repeats=2,
        webhook_payload=False,
        rules=[{"endpoint": "result", "fault": "429", "retry_after": 1, "times": 4}],
    )
    settings = webhook_settings(tmp_path, sim, fal_poll_interval=0.3, max_retry_after=30)
    async with inproc_stack(settings) as stack:
        job, elapsed = await one_video_job(stack, 1, timeout=30)
    assert status_name(job.status) == "COMPLETED"
    assert sim.stats(with_logs=False)["rate_limited"]["result"] == 4
    assert elapsed >= 0.2 + 4 * 1.0 - 0.1


async def test_tasks_committed_but_never_published_are_published_by_the_sweeper(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(tmp_path, sim, stale_after=0.5, sweep_interval=0.2)
    async with inproc_stack(settings) as stack:
        # As if a gateway committed the job and died before publishing: write it directly.
        limits = Limits(10, 10, 3, 3, settings.fal_model, settings.openai_model)
        plan = plan_video_job("orphan", VideoJobRequest(ARENA, total_segments=2), limits)
        await stack.infra.committer.exclusive(
            lambda session, tx: job_store.create_job(session, tx, plan)
        )
        events = await watch_to_end(stack.stub, "orphan", timeout=20)
    assert events[-1].job_status == pb.JOB_STATUS_COMPLETED


async def test_retry_failed_reruns_only_the_failed_segment(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment 2 of 3", "fault": "400"}])
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        job_id = (
            await stack.stub.StartVideoJob(
                pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=3)
            )
        ).job_id
        await watch_to_end(stack.stub, job_id)
        failed = await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        assert status_name(failed.status) == "PARTIALLY_FAILED"
        urls = {t.index: t.result_url for t in failed.tasks}
        sim.configure(rules=[])
        retry = await stack.stub.RetryFailed(pb.RetryFailedRequest(job_id=job_id))
        assert (retry.retried_count, list(retry.retried_tasks)) == (1, [2])
        assert status_name(retry.job.status) == "RUNNING"
        await watch_to_end(stack.stub, job_id, after=failed.last_cursor)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        nothing = await stack.stub.RetryFailed(pb.RetryFailedRequest(job_id=job_id))
    assert status_name(job.status) == "COMPLETED"
    assert job.tasks[0].result_url == urls[1] and job.tasks[2].result_url == urls[3]
    assert job.tasks[1].status == pb.TASK_STATUS_SUCCEEDED and job.tasks[1].attempts == 2
    assert len(job.retry_history) == 1 and list(job.retry_history[0].tasks) == [2]
    stats = sim.stats(with_logs=False)
    assert stats["accepted_requests"] == 3  # segments 1 and 3 were not generated again
    assert nothing.retried_count == 0 and nothing.message.startswith("nothing to retry")


async def test_finished_jobs_are_deleted_after_the_retention(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(tmp_path, sim, job_retention=1, sweep_interval=0.2)
    async with inproc_stack(settings) as stack:
        job_id = (
            await stack.stub.StartVideoJob(
                pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
            )
        ).job_id
        await watch_to_end(stack.stub, job_id)
        async with asyncio.timeout(10):
            while (await stack.stub.ListJobs(pb.ListJobsRequest())).jobs:
                await asyncio.sleep(0.2)  # the retention clock has to pass; nothing to await


async def test_a_429_on_a_status_check_holds_back_that_check_not_other_starts(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    # The first job's status checks are refused with Retry-After: that request is checked
    # again later, while the second job's start goes ahead (a status check's 429 paused every
    # start once, which stalled whole fleets under scattered 429s).
    sim.configure(
        latency=0.3,
        rules=[{"endpoint": "status", "match": "First", "fault": "429", "retry_after": 30}],
    )
    settings = stack_settings(tmp_path, sim, max_retry_after=30)
    async with inproc_stack(settings) as stack:
        first = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, prompt="First")
        )
        async with asyncio.timeout(10):
            while not sim.stats(with_logs=False)["rate_limited"].get("status"):
                await asyncio.sleep(0.02)
        second = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, prompt="Second")
        )
        events = await events_until(
            stack.stub,
            second.job_id,
            lambda seen: any(e.task_status == pb.TASK_STATUS_SUCCEEDED for e in seen),
            follow=True,
        )
        assert not any(e.type == pb.EVENT_TYPE_TASK_DEFERRED for e in events)
        assert sim.stats(with_logs=False)["rate_limited"]["status"] == 1  # checked again later
        await stack.stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id))


async def test_a_finished_generation_whose_result_fetch_fails_hands_its_slot_on(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    # One fal slot. The first job's generation finishes but its result GET is refused with a
    # long Retry-After: fal runs nothing for it any more, so the second job's segment takes
    # the slot at once instead of waiting for that result.
    sim.configure(
        latency=0.3,
        rules=[{"endpoint": "result", "match": "First", "fault": "429", "retry_after": 30}],
    )
    settings = stack_settings(tmp_path, sim, max_retry_after=30, fal_concurrency=1)
    async with inproc_stack(settings) as stack:
        first = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, prompt="First")
        )
        second = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, prompt="Second")
        )
        async with asyncio.timeout(10):
            events = await events_until(
                stack.stub,
                second.job_id,
                lambda seen: any(e.task_status == pb.TASK_STATUS_SUCCEEDED for e in seen),
                follow=True,
            )
        assert any(e.task_status == pb.TASK_STATUS_WAITING for e in events)  # it did queue
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=first.job_id))
        assert [t.status for t in job.tasks] == [pb.TASK_STATUS_RUNNING]  # result not fetched
        first_events = await events_until(
            stack.stub, first.job_id, lambda seen: any("fetched again" in e.message for e in seen)
        )
        assert [e.details["provider_status"] for e in first_events if "fetched again" in e.message]
        stats = sim.stats(with_logs=False)
        assert stats["rate_limited"]["result"] >= 1 and stats["max_in_progress"] == 1
        await stack.stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id))
