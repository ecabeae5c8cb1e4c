"""The CLI as a subprocess against gateway and workers as processes on RabbitMQ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.cli.conftest import assert_events_once_in_order, run_cli
from tests.support.client import watch_to_end
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

ARENA = "https://example.com/arena.png"


def target(stack: Stack) -> list[str]:
    return ["--target", stack.env["GRPC_ADDR"]]


async def test_completed_video_exits_0_with_every_event_once_and_a_summary(
    stack: Stack, sim: SimulatorHandle
) -> None:
    result = await run_cli(*target(stack), "--json", "video", "--arena", ARENA, "-n", "3")
    assert result.code == 0, result.stderr
    events, summary = result.events_and_summary()
    replay = await watch_to_end(stack.stub, summary["job_id"])

    assert_events_once_in_order(events)
    assert [(int(e["cursor"]), e["message"]) for e in events] == [
        (e.cursor, e.message) for e in replay
    ]
    assert events[0]["type"] == "EVENT_TYPE_JOB_CREATED"
    assert events[-1]["job_status"] == "JOB_STATUS_COMPLETED"
    assert {e["job_id"] for e in events} == {summary["job_id"]}
    assert summary["status"] == "COMPLETED" and summary["exit_code"] == 0
    assert summary["kind"] == "video" and summary["last_cursor"] == len(events)
    assert [r["segment"] for r in summary["results"]] == [1, 2, 3]
    assert all(
        r["url"].startswith(sim.url) and r["url"].endswith(".mp4") for r in summary["results"]
    )
    assert summary["failed"] == []
    assert sim.stats(with_logs=False)["submits_total"] == 3


async def test_partially_failed_video_exits_3_and_names_the_failed_segment(
    stack: Stack, sim: SimulatorHandle
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment 2 of", "fault": "400"}])
    result = await run_cli(*target(stack), "--json", "video", "--arena", ARENA, "-n", "3")
    assert result.code == 3, result.stderr
    events, summary = result.events_and_summary()

    assert_events_once_in_order(events)
    assert events[-1]["job_status"] == "JOB_STATUS_PARTIALLY_FAILED"
    failed = [e for e in events if e.get("task_status") == "TASK_STATUS_FAILED"]
    assert [(e["task_index"], e["error_class"]) for e in failed] == [(2, "ERROR_CLASS_BAD_REQUEST")]
    assert summary["status"] == "PARTIALLY_FAILED" and summary["exit_code"] == 3
    assert [(f["index"], f["error_class"], f["attempts"]) for f in summary["failed"]] == [
        (2, "bad_request", 1)
    ]
    assert [r["segment"] for r in summary["results"]] == [1, 3]


async def test_failed_video_exits_4(stack: Stack, sim: SimulatorHandle) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment", "fault": "400"}])
    result = await run_cli(*target(stack), "--json", "video", "--arena", ARENA, "-n", "2")
    assert result.code == 4, result.stderr
    _, summary = result.events_and_summary()
    assert summary["status"] == "FAILED" and summary["results"] == []


async def test_story_job_reports_its_title_and_files(
    stack: Stack, sim: SimulatorHandle, tmp_path: Path
) -> None:
    result = await run_cli(
        *target(stack),
        "--json",
        "story",
        "A sci-fi adventure about time travel",
        "-n",
        "6",
        "--per-set",
        "3",
        "--save",
        "--output-dir",
        "time_travel",
    )
    assert result.code == 0, result.stderr
    events, summary = result.events_and_summary()
    job = await stack.stub.GetJob(pb.GetJobRequest(job_id=summary["job_id"]))

    assert_events_once_in_order(events)
    planned = [e for e in events if e["type"] == "EVENT_TYPE_STORY_PLANNED"]
    assert len(planned) == 1 and planned[0]["details"]["title"] == job.story.story_title
    story = summary["story"]
    assert summary["kind"] == "story" and summary["status"] == "COMPLETED"
    assert story["title"] == job.story.story_title != ""
    assert story["output_directory"] == "time_travel"
    assert [(f["set"], f["segments"]) for f in story["files"]] == [(1, 3), (2, 3)]
    output = tmp_path / "output"
    assert (output / story["metadata_file"]).is_file()
    assert all((output / f["file_path"]).is_file() for f in story["files"])


async def test_human_output_and_the_other_commands(stack: Stack, sim: SimulatorHandle) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment 2 of", "fault": "400"}])
    shown = await run_cli(*target(stack), "video", "--arena", ARENA, "-n", "2")
    assert shown.code == 3, shown.stderr
    job_id = re.search(r"job (\S+) PARTIALLY_FAILED", shown.stdout)
    assert job_id, shown.stdout
    # The log, the final table and the summary (stdout is a pipe here: no live redraws).
    assert "✖ failed" in shown.stdout and "segment 2" in shown.stdout
    assert re.search(r"1\s+✔ succeeded\s+1/4", shown.stdout), shown.stdout
    assert re.search(r"segment\s+1\s+" + re.escape(sim.url), shown.stdout), shown.stdout
    assert f"orchestrator retry {job_id[1]}" in shown.stdout

    sim.configure(rules=[])
    submitted = await run_cli(*target(stack), "video", "--arena", ARENA, "-n", "1", "--no-watch")
    assert submitted.code == 0, submitted.stderr
    new_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", new_id), submitted.stdout

    watched = await run_cli(*target(stack), "--json", "watch", new_id)
    assert watched.code == 0, watched.stderr
    events, summary = watched.events_and_summary()
    assert_events_once_in_order(events)
    later = await run_cli(*target(stack), "--json", "watch", new_id, "--after", "2")
    assert [int(e["cursor"]) for e in later.events_and_summary()[0]] == list(
        range(3, len(events) + 1)
    )

    got = await run_cli(*target(stack), "--json", "get", new_id)
    assert got.code == 0 and got.json_lines()[0]["status"] == "JOB_STATUS_COMPLETED"

    listed = await run_cli(*target(stack), "--json", "list", "--status", "partially_failed")
    assert [j["id"] for j in listed.json_lines()[0]["jobs"]] == [job_id[1]]
    table = await run_cli(*target(stack), "list", "--kind", "video")
    assert job_id[1] in table.stdout and new_id in table.stdout

    retried = await run_cli(*target(stack), "--json", "retry", job_id[1], "--watch")
    assert retried.code == 0, retried.stderr
    events, summary = retried.events_and_summary()
    assert events[0]["type"] == "EVENT_TYPE_RETRY_REQUESTED"
    assert summary["status"] == "COMPLETED"
    nothing = await run_cli(*target(stack), "retry", job_id[1])
    assert nothing.code == 0 and "nothing to retry" in nothing.stdout

    health = await run_cli(*target(stack), "health")
    assert health.code == 0 and "SERVING" in health.stdout


async def test_regenerate_one_segment_and_reuse_identical_ones(
    stack: Stack, sim: SimulatorHandle
) -> None:
    first = await run_cli(
        *target(stack), "--json", "video", "-a", ARENA, "-n", "2", "--max-concurrency", "1"
    )
    assert first.code == 0, first.stderr
    job_id = first.events_and_summary()[1]["job_id"]
    assert sim.stats(with_logs=False)["accepted_requests"] == 2

    usage = await run_cli(*target(stack), "retry", job_id, "--regenerate")
    assert usage.code == 2 and "--task" in usage.stderr
    again = await run_cli(
        *target(stack), "--json", "retry", job_id, "--task", "2", "--regenerate", "--watch"
    )
    assert again.code == 0, again.stderr
    assert again.events_and_summary()[1]["status"] == "COMPLETED"
    assert sim.stats(with_logs=False)["accepted_requests"] == 3  # segment 2 only

    # The same segments again, with reuse: no provider call at all.
    reused = await run_cli(*target(stack), "--json", "video", "-a", ARENA, "-n", "2", "--reuse")
    assert reused.code == 0, reused.stderr
    events, summary = reused.events_and_summary()
    assert summary["status"] == "COMPLETED"
    assert sim.stats(with_logs=False)["accepted_requests"] == 3
    assert sum("reused" in e["message"] for e in events) == 2
