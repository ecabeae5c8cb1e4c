"""Hostile and malformed requests over gRPC (raw bytes included) and HTTP, on SQLite and
PostgreSQL: each gets its status and a message naming the problem, leaves the database exactly as
it was, and leaves the gateway healthy. No answer carries an exception name or a traceback."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from orchestrator.v1 import jobs_pb2 as pb
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from common.store.tables import Event, Job, Task
from services.simulator.app import SimulatorHandle, run_simulator
from services.simulator.config import SimulatorConfig
from tests.security.hostile_cases import GRPC_CASES, HTTP_CASES, GrpcCase, HttpCase
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.stack import FAL_KEY, OPENAI_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")
# What must never reach a caller: exception class names, tracebacks, SQL.
LEAKS = re.compile(
    r"Traceback|Error\(|Exception|KeyError|ValueError|sqlalchemy|asyncpg|sqlite|SELECT |INSERT ",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_sim() -> AsyncIterator[SimulatorHandle]:
    config = SimulatorConfig(latency=0.3, fal_key=FAL_KEY, openai_key=OPENAI_KEY)
    async with run_simulator(config) as handle:
        yield handle


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def stack(
    request: pytest.FixtureRequest,
    module_sim: SimulatorHandle,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[InProcStack]:
    tmp_path: Path = tmp_path_factory.mktemp(request.param)
    url = f"sqlite+aiosqlite:///{tmp_path}/hostile.db"
    admin = None
    if request.param == "postgres":
        base = make_url(request.getfixturevalue("postgres_url"))
        name = f"orch_hostile_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(
            host=base.host, port=base.port, user=base.username, database=base.database
        )
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base.set(database=name).render_as_string(False)
    settings = stack_settings(
        tmp_path,
        module_sim,
        database_url=url,
        webhook_secret="hostile-secret",
        rate_limit_per_second=10_000,
        rate_limit_burst=10_000,
    )
    try:
        async with inproc_stack(settings, workers=()) as running:
            yield running
    finally:
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


async def _rows(stack: InProcStack) -> tuple[Any, ...]:
    async with stack.infra.db.read() as session:
        return tuple(
            [await session.scalar(select(func.count()).select_from(t)) for t in (Job, Task, Event)]
        )


async def _healthy(stack: InProcStack) -> None:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
    await stack.stub.ListJobs(pb.ListJobsRequest())


async def _call(stack: InProcStack, case: GrpcCase) -> grpc.aio.AioRpcError:
    address = f"127.0.0.1:{stack.gateway.grpc_port}"
    path = f"/orchestrator.v1.JobService/{case.method}"
    payload = case.request if isinstance(case.request, bytes) else case.request.SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            if case.method == "WatchJob":
                async for _ in channel.unary_stream(path)(payload):
                    pass
            else:
                await channel.unary_unary(path)(payload)
        except grpc.aio.AioRpcError as exc:
            return exc
    raise AssertionError(f"{case.name}: accepted")


@pytest.mark.parametrize("case", GRPC_CASES, ids=str)
async def test_grpc(stack: InProcStack, case: GrpcCase) -> None:
    before = await _rows(stack)
    error = await _call(stack, case)
    assert error.code().name == case.code, (case.name, error.code(), error.details())
    details = error.details() or ""
    assert case.says in details, (case.name, details)
    assert not LEAKS.search(details), details
    assert await _rows(stack) == before
    await _healthy(stack)


@pytest.mark.parametrize("case", HTTP_CASES, ids=str)
async def test_http(stack: InProcStack, case: HttpCase) -> None:
    before = await _rows(stack)
    headers = {"Content-Type": "application/json", **case.headers}
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        answer = await http.request(case.verb, case.path, content=case.body, headers=headers)
    assert answer.status_code == case.status, (case.name, answer.status_code, answer.text)
    assert case.says in answer.text, (case.name, answer.text)
    assert not LEAKS.search(answer.text), answer.text
    assert await _rows(stack) == before
    await _healthy(stack)


async def test_the_suite_is_large_enough() -> None:
    assert len(GRPC_CASES) + len(HTTP_CASES) >= 100
