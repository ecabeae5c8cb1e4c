"""The gRPC edge: `orchestrator.v1.JobService` on top of `JobsCore`.

Domain errors become gRPC statuses here and only here; their messages name the field.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

import grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrchestratorError,
)
from services.gateway import proto_convert as convert
from services.gateway.core import Heartbeat, JobsCore

log = logging.getLogger(__name__)
T = TypeVar("T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

STATUS_OF: list[tuple[type[OrchestratorError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
]


# Watchers of one job receive the same Event objects from its feed: convert each once.
_event_message = functools.lru_cache(maxsize=10_000)(convert.event_message)


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
            code = next(c for kind, c in STATUS_OF if isinstance(exc, kind))
            await context.abort(code, str(exc))
        raise AssertionError("unreachable")  # context.abort raises

    async def StartVideoJob(
        self, request: pb.StartVideoJobRequest, context: Context
    ) -> pb.StartJobResponse:
        view, created = await self._answer(
            context, lambda: self.core.start_video(convert.video_request(request))
        )
        return pb.StartJobResponse(
            job_id=view.job.id, created=created, job=convert.job_message(view)
        )

    async def StartStoryJob(
        self, request: pb.StartStoryJobRequest, context: Context
    ) -> pb.StartJobResponse:
        view, created = await self._answer(
            context, lambda: self.core.start_story(convert.story_request(request))
        )
        return pb.StartJobResponse(
            job_id=view.job.id, created=created, job=convert.job_message(view)
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        view = await self._answer(
            context, lambda: self.core.get(request.job_id, with_tasks=not request.omit_tasks)
        )
        return convert.job_message(view)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        kind = convert.JOB_KIND_NAME.get(request.kind) if request.kind else None
        statuses = [convert.JOB_STATUS_NAME[s] for s in request.statuses if s]
        views, token = await self._answer(
            context,
            lambda: self.core.list(
                page_size=request.page_size,
                page_token=request.page_token,
                kind=kind,
                statuses=statuses,
            ),
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_message(v) for v in views], next_page_token=token
        )

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        stream = await self._answer(
            context,
            lambda: self.core.watch(
                request.job_id,
                after=request.after_cursor,
                follow=request.follow,
                heartbeat=request.heartbeat_seconds,
            ),
        )
        async for item in stream:
            if isinstance(item, Heartbeat):
                yield convert.heartbeat_message(item)
            else:
                yield pb.WatchJobResponse(events=[_event_message(e) for e in item])

    async def RetryFailed(
        self, request: pb.RetryFailedRequest, context: Context
    ) -> pb.RetryFailedResponse:
        outcome = await self._answer(
            context, lambda: self.core.retry_failed(request.job_id, request.max_retries)
        )
        return pb.RetryFailedResponse(
            retried_count=len(outcome.retried),
            retried_tasks=outcome.retried,
            message=outcome.message,
            job=convert.job_message(outcome.view),
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        view = await self._answer(context, lambda: self.core.cancel(request.job_id))
        return convert.job_message(view)
