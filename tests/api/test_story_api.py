"""Story jobs at the API edge: path traversal refused, the seed HTTP endpoints' shapes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import events_until, watch_to_end
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

IDEA = "A sci-fi adventure about time travel"


@pytest.fixture
async def stack(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    async with inproc_stack(stack_settings(tmp_path, sim)) as s:
        yield s


@pytest.fixture
async def http(stack: InProcStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("directory", ["../x", "a/../../x", "/etc", "link", "link/inner"])
async def test_output_directory_escaping_the_root_is_refused_and_writes_nothing(
    stack: InProcStack, tmp_path: Path, directory: str
) -> None:
    root = stack.settings.output_root
    root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    request = pb.StartStoryJobRequest(
        idea=IDEA, total_segments=10, save_to_files=True, output_directory=directory
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.StartStoryJob(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("output_directory:")
    assert sorted(p.name for p in root.iterdir()) == ["link"]
    assert list(outside.iterdir()) == []
    assert not (await stack.stub.ListJobs(pb.ListJobsRequest())).jobs


async def test_generate_movie_auto_waits_and_answers_the_seed_shape(
    http: httpx.AsyncClient, stack: InProcStack
) -> None:
    answer = await http.post(
        "/generate-movie-auto",
        json={
            "idea": IDEA,
            "total_segments": 30,
            "segments_per_set": 10,
            "save_to_files": True,
            "output_directory": "seed",
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["status"] == "completed"
    result = body["result"]
    assert result["success"] is True
    assert result["story_title"]
    assert result["generation_summary"] == {
        "total_segments_requested": 30,
        "total_segments_generated": 30,
        "total_sets_requested": 3,
        "successful_sets": 3,
        "failed_sets": 0,
        "failed_set_numbers": [],
    }
    assert result["retry_info"] == {"can_retry": False, "failed_sets": [], "retry_history": []}
    assert [s["set_number"] for s in result["sets"]] == [1, 2, 3]
    for entry in result["sets"]:
        assert entry["status"] == "success" and entry["segments_count"] == 10
        assert entry["file_path"].startswith("seed/") and len(entry["segments"]) == 10
        assert (stack.settings.output_root / entry["file_path"]).is_file()
    assert result["metadata_file"].startswith("seed/")
    at_once = await http.post(
        "/generate-movie-auto", json={"idea": IDEA, "total_segments": 5, "wait": False}
    )
    assert at_once.status_code == 202
    assert at_once.json()["status"] in ("queued", "processing")
    shown = await http.get(f"/story-jobs/{at_once.json()['job_id']}")
    assert shown.json()["job_id"] == at_once.json()["job_id"]
    stringly = await http.post(
        "/generate-movie-auto",
        json={"idea": IDEA, "total_segments": 5, "save_to_files": "false", "wait": False},
    )
    assert stringly.status_code == 400 and stringly.json()["field"] == "save_to_files"
    bad = await http.post("/generate-movie-auto", json={"idea": IDEA, "total_segments": 0})
    assert bad.status_code == 400
    assert bad.json() == {
        "success": False,
        "error": "total_segments: must be between 1 and 1000, got 0",
        "field": "total_segments",
    }


async def test_retry_failed_story_sets_reruns_the_failed_set(
    http: httpx.AsyncClient, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "match": "SET 2 OF 2", "fault": "400"}])
    first = await http.post(
        "/generate-movie-auto", json={"idea": IDEA, "total_segments": 20, "segments_per_set": 10}
    )
    body = first.json()
    assert body["success"] is False and body["status"] == "partially_failed"
    assert body["result"]["generation_summary"]["failed_set_numbers"] == [2]
    assert body["result"]["retry_info"]["can_retry"] is True
    failed = body["result"]["sets"][1]
    assert failed["status"] == "failed" and "400" in failed["error"]

    sim.configure(rules=[])
    retried = await http.post(
        "/retry-failed-story-sets", json={"job_id": body["job_id"], "max_retries": 2}
    )
    assert retried.status_code == 200, retried.text
    again = retried.json()
    assert again["success"] is True and again["retried_sets"] == [2]
    assert again["result"]["story_title"] == body["result"]["story_title"]
    assert again["result"]["generation_summary"]["successful_sets"] == 2
    history = again["result"]["retry_info"]["retry_history"]
    assert len(history) == 1 and history[0]["tasks"] == [2] and history[0]["max_retries"] == 2
    nothing = await http.post("/retry-failed-story-sets", json={"job_id": body["job_id"]})
    assert nothing.json()["retried_sets"] == []
    assert nothing.json()["message"].startswith("nothing to retry")
    too_many = await http.post(
        "/retry-failed-story-sets", json={"job_id": body["job_id"], "max_retries": 11}
    )
    assert too_many.status_code == 400 and too_many.json()["field"] == "max_retries"


async def test_retry_story_sets_regenerates_a_chosen_set_with_the_same_roster(
    http: httpx.AsyncClient, sim: SimulatorHandle
) -> None:
    first = await http.post(
        "/generate-movie-auto", json={"idea": IDEA, "total_segments": 6, "segments_per_set": 2}
    )
    body = first.json()
    assert body["success"] is True
    calls = sim.stats(with_logs=False)["chat_calls"]
    plan = await http.post(
        "/retry-failed-story-sets",
        json={"job_id": body["job_id"], "task_indices": [0], "regenerate": True},
    )
    assert plan.status_code == 400 and plan.json()["field"] == "task_indices"  # sets build on it
    again = await http.post(
        "/retry-failed-story-sets",
        json={"job_id": body["job_id"], "task_indices": [2], "regenerate": True},
    )
    assert again.status_code == 200, again.text
    answer = again.json()
    assert answer["retried_sets"] == [2] and answer["success"] is True
    assert answer["result"]["story_title"] == body["result"]["story_title"]
    assert sim.stats(with_logs=False)["chat_calls"] == calls + 1  # that set, nothing else
    roster = {c["name"] for c in body["result"]["characters"]}
    for segment in answer["result"]["sets"][1]["segments"]:
        assert set(segment["characters"]) <= roster


async def test_limits_learned_from_openai_headers_hold_calls_back_before_a_429(
    stack: InProcStack, sim: SimulatorHandle
) -> None:
    # 4 requests a minute: the plan's answer tells the worker so, and of the six sets only
    # three go before the minute ends; the others wait (an event), with no 429 at all.
    sim.configure(openai_rate_limit={"requests_per_minute": 4})
    # Budgets count per clock minute: start early in one so the test does not straddle two.
    if (into := time.time() % 60) > 45:
        await asyncio.sleep(60 - into)
    started = await stack.stub.StartStoryJob(
        pb.StartStoryJobRequest(idea=IDEA, total_segments=6, segments_per_set=1)
    )

    def deferred(events: list[pb.JobEvent]) -> bool:
        return any("per-minute budget spent" in e.message for e in events)

    def succeeded(events: list[pb.JobEvent]) -> list[int]:
        return [e.task_index for e in events if e.task_status == pb.TASK_STATUS_SUCCEEDED]

    events = await events_until(
        stack.stub,
        started.job_id,
        lambda seen: deferred(seen) and len(succeeded(seen)) == 4,
        follow=True,
    )
    stats = sim.stats(with_logs=False)
    assert stats["rate_limited"] == {} and stats["over_budget"] == {}
    assert stats["chat_calls"] == 4
    assert min(succeeded(events)) == 0  # the plan, then three sets
    waiting = next(e for e in events if deferred([e]))
    assert "openai:gpt-4o-mini" in waiting.message


async def test_the_story_is_named_before_its_sets_are_released(stack: InProcStack) -> None:
    # The plan's success, its STORY_PLANNED event and the sets it releases are one commit; the
    # title and roster come first, so a watcher knows the story before any set is queued.
    request = pb.StartStoryJobRequest(idea=IDEA, total_segments=20, segments_per_set=10)
    job_id = (await stack.stub.StartStoryJob(request)).job_id
    events = await watch_to_end(stack.stub, job_id)
    planned = next(i for i, e in enumerate(events) if e.type == pb.EVENT_TYPE_STORY_PLANNED)
    released = [i for i, e in enumerate(events) if e.message == "plan ready"]
    assert len(released) == 2
    assert planned < min(released)
