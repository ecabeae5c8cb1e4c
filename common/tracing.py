"""OpenTelemetry tracing: one trace follows a job from its StartVideoJob / StartStoryJob through
the broker, the workers and every provider call.

Off unless the standard settings ask for it: `OTEL_TRACES_EXPORTER` (other than "none") or an
OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), the SDK
reading the rest (`OTEL_SERVICE_NAME`, headers, sampling...) itself. Off, nothing here costs more
than a flag test.

Spans come from the maintained instrumentations (the gRPC server, the aiohttp and httpx clients
under the fal and OpenAI clients, SQLAlchemy). The context crosses the broker explicitly: a
task message is published later, by the group committer's own loop (or by the outbox, for a
job's first messages), so each owed message captures the W3C `traceparent` of the code that
owed it, and carries it as a header; the worker handles the message inside that context.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)
HEADER = "traceparent"
_provider: TracerProvider | None = None


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTEL_* settings ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "")
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return exporter not in {"", "none"} or any(environ.get(e) for e in endpoints)


def setup_tracing(service: str) -> bool:
    """Turn tracing on for this process if the environment asks; True when it is on."""
    if not wanted():
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    name = os.environ.get("OTEL_SERVICE_NAME") or f"orchestrator-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on (service %s)", name, extra={"event": "session"})
    return True


def install(provider: TracerProvider) -> None:
    """Use `provider` for every span of this process and instrument the libraries."""
    global _provider  # noqa: PLW0603  (process-wide, like the tracer provider itself)
    from opentelemetry.instrumentation.aiohttp_client import (  # noqa: PLC0415
        AioHttpClientInstrumentor,
    )
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    _provider = provider


def instrument_engine(engine: Any) -> None:
    """Statement spans for an engine (an async one's sync core), when tracing is on: the
    instrumentation's engine tracer, attached to this engine (our engines are not created
    through the `create_engine` the instrumentor patches)."""
    if _provider is None:
        return
    from opentelemetry import metrics as otel_metrics  # noqa: PLC0415
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer  # noqa: PLC0415

    usage = otel_metrics.get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    core = getattr(engine, "sync_engine", engine)
    EngineTracer(_provider.get_tracer("sqlalchemy"), core, usage)  # type: ignore[no-untyped-call]


def uninstall() -> None:
    """Undo `install` (for tests)."""
    global _provider  # noqa: PLW0603
    from opentelemetry.instrumentation.aiohttp_client import (  # noqa: PLC0415
        AioHttpClientInstrumentor,
    )
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    AioHttpClientInstrumentor().uninstrument()
    HTTPXClientInstrumentor().uninstrument()
    _provider = None


def enabled() -> bool:
    return _provider is not None


def grpc_interceptors() -> list[Any]:
    """The gRPC server's tracing interceptor, when tracing is on."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415

    return [aio_server_interceptor(tracer_provider=_provider)]  # type: ignore[no-untyped-call]


def current() -> str | None:
    """The current span's `traceparent`, to carry with work done later; None when off."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(HEADER)


@contextmanager
def continued(traceparent: object, name: str, **attributes: str | int) -> Iterator[None]:
    """A consumer span `name`, child of `traceparent` (a message header), for the block."""
    if _provider is None:
        yield
        return
    parent = propagate.extract({HEADER: traceparent} if isinstance(traceparent, str) else {})
    token = otel_context.attach(parent)
    try:
        tracer = _provider.get_tracer("orchestrator")
        with tracer.start_as_current_span(
            name, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            yield
    finally:
        otel_context.detach(token)
