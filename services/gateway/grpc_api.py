"""The gRPC edge: `orchestrator.v1.JobService` on top of `JobsCore`.

Domain errors become gRPC statuses here and only here; their messages name the field. Who the
caller is, the limits and unexpected errors are the guard's (grpc_guard.py), around every call.

WatchJob sends each batch of events as bytes serialized once for every stream at the same
cursor (`add_to_server` registers the method with a serializer that passes bytes through): with
a thousand watchers of a job, building and serializing a response per stream was a fifth of the
gateway's time. A batch's bytes are the concatenation of its events' encodings as one-element
`WatchJobResponse`s, which is exactly the encoding of the response holding them all (a repeated
field is encoded element by element), and each event's encoding is itself made once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import message_factory
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from common import metrics
from common.domain.records import EventRecord
from common.errors import InvalidArgument, OrchestratorError
from services.gateway import proto_convert as convert
from services.gateway.core import Heartbeat, JobsCore
from services.gateway.grpc_guard import current_caller, status_of

log = logging.getLogger(__name__)
T = TypeVar("T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


SERVICE = pb.DESCRIPTOR.services_by_name["JobService"]


@functools.lru_cache(maxsize=10_000)
def _event_bytes(event: EventRecord) -> bytes:
    """`event` encoded as a one-element WatchJobResponse. Watchers of one job receive the same
    records from its feed, so each is encoded once."""
    return pb.WatchJobResponse(events=[convert.event_message(event)]).SerializeToString()


def encode_batch(events: Sequence[EventRecord]) -> bytes:
    """The serialized `WatchJobResponse` of `events`."""
    return b"".join(map(_event_bytes, events))


def _watch_response(item: pb.WatchJobResponse | bytes) -> bytes:
    return item if isinstance(item, bytes) else item.SerializeToString()


def add_to_server(service: JobService, server: grpc.aio.Server) -> None:
    """Serve `service` as the generated `add_JobServiceServicer_to_server` would (every method
    of the proto's JobService), except that WatchJob may answer with serialized bytes."""
    handlers = {}
    for method in SERVICE.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        serialize = _watch_response if method.name == "WatchJob" else response.SerializeToString
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(service, method.name),
            request_deserializer=request.FromString,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    # (as the generated code does; grpc-stubs predates the method)
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, core: JobsCore) -> None:
        self.core = core

    async def _answer(self, context: Context, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `call` and map domain errors to statuses.

        Shielded: when the client hangs up (or its deadline passes) gRPC cancels the handler,
        but the call's transaction still finishes cleanly instead of being cut mid-statement;
        its answer is simply dropped. The gateway awaits such leftovers before closing.
        """
        try:
            return await self.core.hub.background.shield(call())
        except OrchestratorError as exc:
            await context.abort(status_of(exc), str(exc))
        raise AssertionError("unreachable")  # context.abort raises

    async def StartVideoJob(
        self, request: pb.StartVideoJobRequest, context: Context
    ) -> pb.StartJobResponse:
        caller = current_caller()
        view, created = await self._answer(
            context, lambda: self.core.start_video(convert.video_request(request), caller)
        )
        return pb.StartJobResponse(
            job_id=view.job.id, created=created, job=convert.job_message(view)
        )

    async def StartStoryJob(
        self, request: pb.StartStoryJobRequest, context: Context
    ) -> pb.StartJobResponse:
        caller = current_caller()
        view, created = await self._answer(
            context, lambda: self.core.start_story(convert.story_request(request), caller)
        )
        return pb.StartJobResponse(
            job_id=view.job.id, created=created, job=convert.job_message(view)
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        caller = current_caller()
        view = await self._answer(
            context,
            lambda: self.core.get(request.job_id, caller, with_tasks=not request.omit_tasks),
        )
        return convert.job_message(view)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        caller = current_caller()
        try:
            kind, statuses = convert.list_filters(request)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        views, token = await self._answer(
            context,
            lambda: self.core.list(
                caller=caller,
                page_size=request.page_size,
                page_token=request.page_token,
                kind=kind,
                statuses=statuses,
            ),
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_message(v) for v in views], next_page_token=token
        )

    async def WatchJob(  # type: ignore[override]
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse | bytes]:
        caller = current_caller()
        stream = await self._answer(
            context,
            lambda: self.core.watch(
                request.job_id,
                caller=caller,
                after=request.after_cursor,
                follow=request.follow,
                heartbeat=request.heartbeat_seconds,
            ),
        )
        watching = metrics.watchers.labels("grpc")
        watching.inc()
        try:
            async for item in stream:
                if isinstance(item, Heartbeat):
                    yield convert.heartbeat_message(item)
                else:
                    yield item.derive("grpc", encode_batch)  # shared by streams at its cursor
        finally:
            watching.dec()

    async def RetryFailed(
        self, request: pb.RetryFailedRequest, context: Context
    ) -> pb.RetryFailedResponse:
        caller = current_caller()
        outcome = await self._answer(
            context,
            lambda: self.core.retry_failed(
                request.job_id,
                request.max_retries,
                caller,
                indices=list(request.task_indices),
                regenerate=request.regenerate,
            ),
        )
        return pb.RetryFailedResponse(
            retried_count=len(outcome.retried),
            retried_tasks=outcome.retried,
            message=outcome.message,
            job=convert.job_message(outcome.view),
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        caller = current_caller()
        view = await self._answer(context, lambda: self.core.cancel(request.job_id, caller))
        return convert.job_message(view)
