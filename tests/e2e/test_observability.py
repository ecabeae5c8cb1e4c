"""What operators see: each process's /metrics agrees with what the provider saw, and the
workers' JSON logs tell every step of a job, with its ids, through faults and a restart."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.support.client import watch_to_end
from tests.support.procs import free_port
from tests.support.stack import running_stack

ARENA = "https://example.com/arena.png"
SAMPLE = re.compile(r"^(?P<name>\w+)(\{(?P<labels>[^}]*)\})? (?P<value>[0-9.e+-]+)$")


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"] == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            found.append((labels, float(match["value"])))
    return found


def _calls(text: str, provider: str) -> dict[str, float]:
    per_endpoint: dict[str, float] = defaultdict(float)
    for labels, value in _samples(text, "orchestrator_provider_calls_total"):
        if labels["provider"] == provider:
            per_endpoint[labels["endpoint"]] += value
    return dict(per_endpoint)


async def test_every_process_exposes_metrics_that_agree_with_the_provider(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    # Faults on every kind of call, deterministic (a random rate may spare a short run).
    sim.configure(
        rules=[
            {"endpoint": "submit", "match": "segment 2 of", "fault": "503", "times": 2},
            {"endpoint": "status", "fault": "429", "times": 2, "retry_after": 0.1},
            {"endpoint": "chat", "match": "SET 2 OF", "fault": "503", "times": 1},
        ],
    )
    ports = {"video_worker": free_port(), "story_worker": free_port()}
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, services=("gateway",)
    ) as stack:
        for name, port in ports.items():
            await stack.start(name, env={"METRICS_ADDR": f"127.0.0.1:{port}"})
        video = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=6, max_retries=8)
        )
        story = await stack.stub.StartStoryJob(
            pb.StartStoryJobRequest(
                idea="a duel", total_segments=6, segments_per_set=2, max_retries=8
            )
        )
        for job_id in (video.job_id, story.job_id):
            await watch_to_end(stack.stub, job_id)
        async with httpx.AsyncClient() as http:
            scraped = {
                name: (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                for name, port in ports.items()
            }
            scraped["gateway"] = (await http.get(f"{stack.http_url}/metrics")).text
    seen = sim.stats(with_logs=False)["calls"]
    fal = _calls(scraped["video_worker"], "fal")
    for endpoint in ("submit", "status", "result"):
        assert fal.get(endpoint, 0) == seen.get(endpoint, 0), (endpoint, fal, seen)
    assert _calls(scraped["story_worker"], "openai").get("chat", 0) == seen["chat"]
    calls = _samples(scraped["video_worker"], "orchestrator_provider_calls_total")
    outcomes = {labels["outcome"] for labels, _ in calls}
    assert "transient" in outcomes and "ok" in outcomes
    assert _samples(scraped["video_worker"], "orchestrator_provider_call_duration_seconds_count")
    assert _samples(scraped["video_worker"], "orchestrator_messages_handled_total")
    assert _samples(scraped["video_worker"], "orchestrator_commit_batch_size_count")
    retries = sum(
        v for _, v in _samples(scraped["video_worker"], "orchestrator_task_retries_total")
    )
    assert retries >= 1
    jobs = {
        (k["kind"], k["status"]): v for k, v in _samples(scraped["gateway"], "orchestrator_jobs")
    }
    assert jobs == {("video", "completed"): 1, ("story", "completed"): 1}
    slots = _samples(scraped["gateway"], "orchestrator_provider_slots_limit")
    assert slots and slots[0][0]["pool"] == "fal"


def _lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                found.append(json.loads(line[start:]))
            except ValueError:
                continue
    return found


async def test_the_worker_log_tells_every_step_of_a_job_through_faults_and_a_restart(
    tmp_path: Path, amqp_url: str, broker_prefix: str, sim: SimulatorHandle
) -> None:
    # One segment's first submit fails (retried); the worker is restarted mid-job.
    sim.configure(
        latency=1.0,
        rules=[{"endpoint": "submit", "match": "segment 2 of", "fault": "503", "times": 1}],
    )
    async with running_stack(
        tmp_path, amqp_url, broker_prefix, sim, env={"LOG_FORMAT": "json"}
    ) as stack:
        job = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=3)
        )
        worker = stack.processes["video_worker"]
        await worker.wait_for_line(r'"event": "submit"')
        await worker.stop()
        await stack.start("video_worker")
        await watch_to_end(stack.stub, job.job_id)
        lines = [x for x in _lines("\n".join(worker.lines)) if x.get("job_id") == job.job_id]
    steps: dict[int, set[str]] = defaultdict(set)
    for line in lines:
        if line.get("task_index") is not None:
            steps[line["task_index"]].add(line["event"])
    for index in (1, 2, 3):
        assert {"submit", "status_check", "success"} <= steps[index], (index, steps[index])
    (retry,) = [line for line in lines if line["event"] == "retry"]
    assert retry["task_index"] == 2 and retry["retry_in"] >= 0 and retry["attempt"] == 1
    done = [line for line in lines if line["event"] == "job_done"]
    assert done and done[0]["total_seconds"] > 0
    assert all(line["service"] == "video_worker" for line in lines)
