"""Story jobs through real RabbitMQ, real gateway and story-worker processes, the real openai
client against the simulator: sets, files, consistency, retries, crashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import assert_cursor_order, events_until, status_name, watch_to_end
from tests.support.stack import OPENAI_KEY, running_stack

STORY = ("gateway", "story_worker")
IDEA = "A sci-fi adventure about time travel"


def story_request(directory: str = "time_travel") -> pb.StartStoryJobRequest:
    return pb.StartStoryJobRequest(
        idea=IDEA,
        total_segments=30,
        segments_per_set=10,
        save_to_files=True,
        output_directory=directory,
    )


def read_sets(folder: Path) -> dict[int, dict[str, Any]]:
    return {
        json.loads(p.read_text())["set_number"]: json.loads(p.read_text())
        for p in folder.glob("*_set_*.json")
    }


def chat_calls_for_set(sim: SimulatorHandle, number: int, total: int = 3) -> list[dict[str, Any]]:
    return [c for c in sim.stats()["chat_log"] if c["user"].startswith(f"SET {number} OF {total}")]


async def test_thirty_segments_in_sets_of_ten_with_one_roster(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, services=STORY) as stack:
        started = await stack.stub.StartStoryJob(story_request())
        events = await watch_to_end(stack.stub, started.job_id)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        logs = stack.logs()

    assert status_name(job.status) == "COMPLETED", job.message
    assert_cursor_order(events)
    story = job.story
    summary = story.generation_summary
    assert (summary.total_segments_requested, summary.total_segments_generated) == (30, 30)
    assert (summary.total_sets_requested, summary.successful_sets, summary.failed_sets) == (3, 3, 0)
    assert story.story_title and len(story.characters) >= 2
    assert not story.retry_info.can_retry
    folder = tmp_path / "output" / "time_travel"
    sets = read_sets(folder)
    assert sorted(sets) == [1, 2, 3]
    roster = [c.name for c in story.characters]
    for number, content in sets.items():
        assert content["story_title"] == story.story_title
        assert [c["name"] for c in content["characters"]] == roster
        numbers = [s["segment_number"] for s in content["segments"]]
        assert numbers == list(range(number * 10 - 9, number * 10 + 1))
        for segment in content["segments"]:
            assert set(segment["characters"]) <= set(roster)
            assert {d["character"] for d in segment["dialogue"]} <= set(roster)
    metadata = json.loads((tmp_path / "output" / story.metadata_file).read_text())
    assert metadata["story_title"] == story.story_title
    assert metadata["generation_summary"]["successful_sets"] == 3
    assert [t.file_path for t in job.tasks[1:]] == [
        f"time_travel/{Path(p).name}" for p in sorted(str(p) for p in folder.glob("*_set_*.json"))
    ]
    assert OPENAI_KEY not in logs and OPENAI_KEY not in json.dumps(metadata)


async def test_failed_set_is_retried_alone_and_fits_the_story(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "match": "SET 3 OF 3", "fault": "400"}])
    async with running_stack(tmp_path, amqp_url, broker_prefix, sim, services=STORY) as stack:
        started = await stack.stub.StartStoryJob(story_request())
        await watch_to_end(stack.stub, started.job_id)
        failed = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        folder = tmp_path / "output" / "time_travel"
        before = read_sets(folder)

        assert status_name(failed.status) == "PARTIALLY_FAILED", failed.message
        assert list(failed.story.generation_summary.failed_set_numbers) == [3]
        assert failed.story.retry_info.can_retry and list(failed.story.retry_info.failed_sets) == [
            3
        ]
        assert (
            failed.tasks[3].attempts == 1
            and failed.tasks[3].error_class == pb.ERROR_CLASS_BAD_REQUEST
        )
        assert sorted(before) == [1, 2]  # no file for the failed set

        sim.configure(rules=[])
        calls_before = sim.stats()["chat_calls"]
        retry = await stack.stub.RetryFailed(
            pb.RetryFailedRequest(job_id=started.job_id, max_retries=5)
        )
        assert (retry.retried_count, list(retry.retried_tasks)) == (1, [3])
        events = await watch_to_end(stack.stub, started.job_id, after=failed.last_cursor)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    assert events and events[-1].job_status == pb.JOB_STATUS_COMPLETED
    new_calls = sim.stats()["chat_log"][calls_before:]
    assert [c["user"][:10] for c in new_calls] == ["SET 3 OF 3"]  # only set 3 was generated
    after = read_sets(folder)
    assert sorted(after) == [1, 2, 3]
    assert after[1] == before[1] and after[2] == before[2]  # untouched
    assert after[3]["story_title"] == before[1]["story_title"] == job.story.story_title
    assert after[3]["characters"] == before[1]["characters"]
    history = job.story.retry_info.retry_history
    assert len(history) == 1 and list(history[0].tasks) == [3] and history[0].max_retries == 5
    assert job.tasks[3].attempts == 2 and job.tasks[3].max_attempts == 7
    metadata = json.loads((tmp_path / "output" / job.story.metadata_file).read_text())
    assert metadata["generation_summary"]["failed_set_numbers"] == []
    assert len(metadata["retry_info"]["retry_history"]) == 1


async def test_transient_faults_on_30_percent_of_calls(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(
        faults=[
            {
                "endpoints": ["chat"],
                "rates": {"429": 0.1, "500": 0.1, "timeout": 0.1},
                "retry_after": 0.2,
            }
        ],
        hang_seconds=3,
    )
    env = {
        "STORY_MAX_RETRIES": "8",
        "OPENAI_TIMEOUT": "1",
        "BREAKER_CONSECUTIVE_FAILURES": "0",
        "BREAKER_MIN_CALLS": "1000",
    }
    # Sets of 3: eleven model calls (plan + ten sets) before any retry.
    request = pb.StartStoryJobRequest(idea=IDEA, total_segments=30, segments_per_set=3)
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=STORY, env=env
    ) as stack:
        started = await stack.stub.StartStoryJob(request)
        await watch_to_end(stack.stub, started.job_id, timeout=120)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    stats = sim.stats()
    assert stats["faults_injected"].get("chat"), "the simulator injected no faults"
    # The model was called once per attempt the tasks record, and never more than allowed.
    assert stats["chat_calls"] == sum(t.attempts for t in job.tasks)
    assert all(t.attempts <= t.max_attempts == 9 for t in job.tasks)
    assert any(t.attempts > 1 for t in job.tasks)


async def test_story_worker_sigkilled_mid_job_finishes_without_rewriting_done_sets(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(chat_latency=0.6)
    env = {"STORY_PREFETCH": "2"}  # sets 1-2 run, set 3 waits: the kill catches them mid-way
    request = pb.StartStoryJobRequest(
        idea=IDEA,
        total_segments=40,
        segments_per_set=10,
        save_to_files=True,
        output_directory="crash",
    )
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=STORY, env=env
    ) as stack:
        started = await stack.stub.StartStoryJob(request)
        await events_until(
            stack.stub,
            started.job_id,
            lambda seen: any(
                e.task_index > 0 and e.task_status == pb.TASK_STATUS_SUCCEEDED for e in seen
            ),
        )
        await stack.processes["story_worker"].kill()
        snapshot = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))
        succeeded = {t.index for t in snapshot.tasks[1:] if t.status == pb.TASK_STATUS_SUCCEEDED}
        await stack.start("story_worker")
        await watch_to_end(stack.stub, started.job_id, timeout=60)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=started.job_id))

    assert status_name(job.status) == "COMPLETED", job.message
    assert succeeded and len(succeeded) < 4
    folder = tmp_path / "output" / "crash"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left
    assert sorted(read_sets(folder)) == [1, 2, 3, 4]  # every file parses
    for number in succeeded:
        ok = [c for c in chat_calls_for_set(sim, number, 4) if c["status"] == 200]
        assert len(ok) == 1, f"set {number} was generated {len(ok)} times"
