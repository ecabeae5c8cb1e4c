"""Secrets never leave: jobs run with recognisable keys and tokens, while the providers answer
some calls with errors that quote the key back; then every log line of every process, every
event, every row, every answer and every output file is searched for them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from sqlalchemy import select, text

from common.auth import Role, hash_entry
from common.store.database import open_database
from common.store.tables import Task
from orchestrator_client import JobsClient
from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.support.procs import free_port
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e

MARK = "SECRETMARK"
FAL = f"fal-{MARK}-1111"
OPENAI = f"sk-{MARK}-2222"
TOKEN = f"tok-{MARK}-3333"
WEBHOOK = f"whs-{MARK}-4444"
WRONG_TOKEN = f"tok-{MARK}-wrong"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    config = SimulatorConfig(latency=0.3, chat_latency=0.1, fal_key=FAL, openai_key=OPENAI)
    async with run_simulator(config) as handle:
        yield handle


async def test_keys_and_tokens_never_leave(
    tmp_path: Path, amqp_url: str, queue_prefix: str, sim: SimulatorHandle
) -> None:
    sim.configure(
        rules=[
            {"endpoint": "submit", "match": "segment 2 of", "fault": "echo_key"},
            {"endpoint": "chat", "match": "SET 1 OF", "fault": "echo_key"},
        ]
    )
    http_port = free_port()
    env = {
        "FAL_KEY": FAL,
        "OPENAI_API_KEY": OPENAI,
        "AUTH_TOKENS": hash_entry("owner", Role.SUBMIT, TOKEN),
        "WEBHOOK_SECRET": WEBHOOK,
        "HTTP_ADDR": f"127.0.0.1:{http_port}",
        "PUBLIC_HTTP_URL": f"http://127.0.0.1:{http_port}",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json",
    }
    answers: list[str] = []
    async with running_stack(
        tmp_path,
        amqp_url,
        queue_prefix,
        sim,
        services=("gateway", "video_worker", "story_worker"),
        env=env,
    ) as stack:
        async with JobsClient(stack.env["GRPC_ADDR"], token=TOKEN) as client:
            video = await client.start_video(
                battle_arena_url="https://example.com/a.png", total_segments=3
            )
            story = await client.start_story(
                idea="a duel at dawn",
                total_segments=4,
                segments_per_set=2,
                save_to_files=True,
                output_directory="secrets",
            )
            for job_id in (video.job_id, story.job_id):
                async for event in client.watch(job_id):
                    answers.append(str(event))
                answers.append(str(await client.get(job_id)))
        # Refused callers: a wrong token, over gRPC and HTTP.
        async with grpc.aio.insecure_channel(stack.env["GRPC_ADDR"]) as channel:
            stub_error = ""
            try:
                await channel.unary_unary("/orchestrator.v1.JobService/ListJobs")(
                    b"", metadata=(("authorization", f"Bearer {WRONG_TOKEN}"),)
                )
            except grpc.aio.AioRpcError as exc:
                stub_error = str(exc.details())
            answers.append(stub_error)
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            refused = await http.get("/metrics", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
            answers.append(refused.text)
        logs = "\n".join("\n".join(p.lines) for p in stack.processes.values())
    async with (
        open_database(stack.env["DATABASE_URL"], migrate=False) as db,
        db.read() as session,
    ):
        rows = []
        for table in ("jobs", "tasks", "events", "workers"):
            found = await session.execute(text(f"SELECT * FROM {table}"))
            rows += [json.dumps(list(r), default=str) for r in found]
        failed = await session.scalar(select(Task.id).where(Task.status == "failed").limit(1))
    files = [p.read_text() for p in (tmp_path / "output").rglob("*") if p.is_file()]
    assert failed, "the echoing providers should have failed some tasks"
    # The providers did quote the keys: what reached us was masked.
    assert "Key ***" in "\n".join(rows) and "Bearer ***" in "\n".join(rows)
    assert len(logs.splitlines()) > 100  # DEBUG: every library's lines are in there
    assert len(files) >= 2, "the story should have written files"
    places = {
        "logs": logs,
        "answers": "\n".join(answers),
        "rows": "\n".join(rows),
        "files": "\n".join(files),
    }
    for where, haystack in places.items():
        for secret in (FAL, OPENAI, TOKEN, WEBHOOK, WRONG_TOKEN):
            assert secret not in haystack, f"{secret!r} found in {where}"
        assert MARK not in haystack, f"part of a secret found in {where}"
