"""Property-based: whatever a client sends (request messages over gRPC, JSON bodies over HTTP),
the gateway answers with a status it documents, never UNKNOWN/INTERNAL/500, never an internal
detail, and only an accepted request creates anything.

The gateway runs in a thread with its own event loop; hypothesis drives it with synchronous
clients.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from services.simulator.app import run_simulator
from services.simulator.config import SimulatorConfig
from tests.support.inproc import inproc_stack, stack_settings
from tests.support.stack import FAL_KEY, OPENAI_KEY

ALLOWED_GRPC = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
ALLOWED_HTTP = {200, 202, 400, 404, 409}
LEAKS = re.compile(r"Traceback|Exception|Error\(|sqlalchemy|sqlite|SELECT ")
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Served:
    grpc_address: str
    http_url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path: Path = tmp_path_factory.mktemp("properties")
    ready = threading.Event()
    addresses: dict[str, str] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        config = SimulatorConfig(latency=0.3, fal_key=FAL_KEY, openai_key=OPENAI_KEY)
        async with run_simulator(config) as sim:
            s = stack_settings(
                tmp_path, sim, rate_limit_per_second=100_000, rate_limit_burst=100_000
            )
            async with inproc_stack(s, workers=()) as stack:
                addresses["grpc"] = f"127.0.0.1:{stack.gateway.grpc_port}"
                addresses["http"] = stack.http_url
                ready.set()
                await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "the gateway did not start"
    yield Served(addresses["grpc"], addresses["http"])
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


text = st.text(max_size=60) | st.sampled_from(
    ["", " ", "https://example.com/a.png", "\x00", "a\r\nb"]
)
urls = st.one_of(
    text,
    st.builds(lambda h, p: f"https://{h}/{p}", st.text(max_size=20), st.text(max_size=20)),
    st.sampled_from(
        [
            "http://[::1",
            "http://127.0.0.1/x",
            "https://u:p@h.example/x",
            "https://example.com/a.png",
        ]
    ),
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _video() -> Any:
    return st.builds(
        pb.StartVideoJobRequest,
        battle_arena_url=urls,
        total_segments=st.integers(-3, 12_000),
        prompt=text,
        segment_prompts=st.lists(text, max_size=4),
        model=text | st.sampled_from(["fal-ai/x/y", "fal-ai/../x", "a/b/c/d/e/f/g"]),
        idempotency_key=text,
        priority=st.integers(-2, 6),
        max_retries=st.integers(-2, 12),
    )


def _story() -> Any:
    return st.builds(
        pb.StartStoryJobRequest,
        idea=text,
        total_segments=st.integers(-3, 1200),
        segments_per_set=st.integers(-3, 60),
        save_to_files=st.booleans(),
        output_directory=text | st.sampled_from(["../x", "/etc", "a/b", "é" * 130]),
        model=text,
        idempotency_key=text,
        priority=st.integers(-2, 6),
        max_retries=st.integers(-2, 12),
    )


def _check(error: grpc.RpcError | None) -> None:
    if error is None:
        return
    assert error.code() in ALLOWED_GRPC, (error.code(), error.details())
    assert not LEAKS.search(error.details() or ""), error.details()


def _call(served: Served, method: str, request: Any) -> grpc.RpcError | None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        try:
            getattr(pb_grpc.JobServiceStub(channel), method)(request, timeout=10)
        except grpc.RpcError as exc:
            return exc
    return None


@EXAMPLES
@given(request=_video())
def test_any_video_request_gets_a_documented_answer(served: Served, request: Any) -> None:
    _check(_call(served, "StartVideoJob", request))


@EXAMPLES
@given(request=_story())
def test_any_story_request_gets_a_documented_answer(served: Served, request: Any) -> None:
    _check(_call(served, "StartStoryJob", request))


@EXAMPLES
@given(
    page_size=st.integers(-5, 1000),
    page_token=text,
    kind=st.integers(0, 9),
    statuses=st.lists(st.integers(0, 12), max_size=8),
)
def test_any_list_request_gets_a_documented_answer(
    served: Served, page_size: int, page_token: str, kind: int, statuses: list[int]
) -> None:
    request = pb.ListJobsRequest(page_size=page_size, page_token=page_token)
    request.kind = kind  # type: ignore[assignment]
    request.statuses.extend(statuses)  # type: ignore[arg-type]
    _check(_call(served, "ListJobs", request))


@EXAMPLES
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "action",
                "battleArenaUrl",
                "totalSegments",
                "prompt",
                "segmentPrompts",
                "idempotencyKey",
                "sessionId",
                "x",
            ]
        ),
        json_values,
        max_size=6,
    )
)
def test_any_seed_video_body_gets_a_documented_answer(served: Served, body: dict[str, Any]) -> None:
    _post(served, "/api/generate-video", body)


@EXAMPLES
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "idea",
                "total_segments",
                "segments_per_set",
                "save_to_files",
                "output_directory",
                "model",
                "wait",
                "timeout_seconds",
                "y",
            ]
        ),
        json_values,
        max_size=7,
    )
)
def test_any_seed_story_body_gets_a_documented_answer(served: Served, body: dict[str, Any]) -> None:
    body.setdefault("wait", False)  # never wait for the (absent) workers
    if body["wait"] is not False:
        body["wait"] = False
    _post(served, "/generate-movie-auto", body)


@EXAMPLES
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_body_get_a_documented_answer(served: Served, raw: bytes) -> None:
    answer = httpx.post(f"{served.http_url}/api/generate-video", content=raw, timeout=10)
    assert answer.status_code in ALLOWED_HTTP, answer.text
    with grpc.insecure_channel(served.grpc_address) as channel:
        call = channel.unary_unary("/orchestrator.v1.JobService/StartVideoJob")
        try:
            call(raw, timeout=10)
        except grpc.RpcError as exc:
            _check(exc)


def _post(served: Served, path: str, body: dict[str, Any]) -> None:
    try:
        answer = httpx.post(f"{served.http_url}{path}", json=body, timeout=10)
    except ValueError:  # NaN / Infinity: httpx itself refuses to send them as JSON
        return
    assert answer.status_code in ALLOWED_HTTP, (body, answer.status_code, answer.text)
    assert not LEAKS.search(answer.text), answer.text
