"""Tracing: one segment's spans, from the gateway's StartVideoJob through the broker and the
worker to each provider call, share one trace (an in-memory exporter collects them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from orchestrator.v1 import jobs_pb2 as pb

from common import tracing
from services.simulator.app import SimulatorHandle
from tests.support.client import watch_to_end
from tests.support.inproc import inproc_stack, stack_settings


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()


def test_tracing_is_off_unless_the_standard_settings_ask() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"})


async def test_one_segment_is_one_trace_from_the_rpc_to_every_provider_call(
    tmp_path: Path, sim: SimulatorHandle, spans: InMemorySpanExporter
) -> None:
    async with inproc_stack(stack_settings(tmp_path, sim), workers=("video",)) as stack:
        job = await stack.stub.StartVideoJob(
            pb.StartVideoJobRequest(battle_arena_url="https://example.com/a.png", total_segments=1)
        )
        await watch_to_end(stack.stub, job.job_id)
    finished = spans.get_finished_spans()
    (rpc,) = [s for s in finished if s.name.endswith("JobService/StartVideoJob")]
    trace_id = rpc.context.trace_id
    ours = [s for s in finished if s.context.trace_id == trace_id]
    names = [s.name for s in ours]
    assert any(n == "video.segment run" for n in names), names
    assert any(n == "video.segment poll" for n in names), names
    urls = [str(s.attributes.get("url.full") or s.attributes.get("http.url") or "") for s in ours]
    assert any(u.startswith(sim.url) and "/requests/" not in u for u in urls), urls  # submit
    assert any(u.endswith("/status?logs=1") or "/status" in u for u in urls), urls
    assert any(
        "/requests/" in u and not u.split("?")[0].endswith(("/status", "/cancel")) for u in urls
    ), urls
    assert any(
        s.name.startswith(("SELECT", "UPDATE", "INSERT", "BEGIN")) or "sqlite" in s.name
        for s in finished
    )
