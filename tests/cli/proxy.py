"""A small gRPC server in the test's loop that forwards `JobService` calls to a real gateway.

It records what clients send (requests, metadata) and can misbehave on purpose: refuse calls
without the right token, answer UNAVAILABLE after forwarding a start (the gateway committed the
job, the client never heard), or break WatchJob streams after a few responses. This is how the
client library's retries are tested without timing a real crash to the microsecond.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass
class Faults:
    """What the proxy does wrong; counters count down as faults fire."""

    required_token: str | None = None
    # Forward the next N starts, then answer UNAVAILABLE (or this code) instead of the answer.
    lose_start_answers: int = 0
    lose_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    # Refuse the next N starts with UNAVAILABLE without forwarding them.
    refuse_starts: int = 0
    # Break each of the next WatchJob streams with UNAVAILABLE after this many responses.
    break_watches_after: list[int] = field(default_factory=list)


@dataclass
class Seen:
    starts: list[pb.StartVideoJobRequest | pb.StartStoryJobRequest] = field(default_factory=list)
    watches: list[pb.WatchJobRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)


class ProxyService(pb_grpc.JobServiceServicer):
    def __init__(self, upstream: pb_grpc.JobServiceAsyncStub) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.seen = Seen()

    async def _admit(self, context: Context) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.seen.metadata.append(metadata)
        token = self.faults.required_token
        if token is None:
            return
        given = metadata.get("authorization")
        if given is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing")
        if given != f"Bearer {token}":
            # Echo what came (a careless server might): the client must scrub its token.
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"authorization: {given!r} is not allowed"
            )

    async def _start(self, request: Any, forward: Any, context: Context) -> pb.StartJobResponse:
        await self._admit(context)
        self.seen.starts.append(request)
        if self.faults.refuse_starts:
            self.faults.refuse_starts -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: gateway unreachable")
        answer: pb.StartJobResponse = await self._forward(forward, request, context)
        if self.faults.lose_start_answers:
            self.faults.lose_start_answers -= 1
            await context.abort(self.faults.lose_code, "proxy: connection lost before answering")
        return answer

    async def StartVideoJob(
        self, request: pb.StartVideoJobRequest, context: Context
    ) -> pb.StartJobResponse:
        return await self._start(request, self.upstream.StartVideoJob, context)

    async def StartStoryJob(
        self, request: pb.StartStoryJobRequest, context: Context
    ) -> pb.StartJobResponse:
        return await self._start(request, self.upstream.StartStoryJob, context)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        await self._admit(context)
        return await self._forward(self.upstream.GetJob, request, context)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        await self._admit(context)
        return await self._forward(self.upstream.ListJobs, request, context)

    async def RetryFailed(
        self, request: pb.RetryFailedRequest, context: Context
    ) -> pb.RetryFailedResponse:
        await self._admit(context)
        return await self._forward(self.upstream.RetryFailed, request, context)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        await self._admit(context)
        return await self._forward(self.upstream.CancelJob, request, context)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        await self._admit(context)
        self.seen.watches.append(request)
        limit = self.faults.break_watches_after.pop(0) if self.faults.break_watches_after else None
        sent = 0
        try:
            async for item in self.upstream.WatchJob(request):
                if limit is not None and sent >= limit:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: stream broken")
                yield item
                sent += 1
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")

    async def _forward(self, method: Any, request: Any, context: Context) -> Any:
        try:
            return await method(request)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")


@dataclass
class Proxy:
    address: str
    service: ProxyService

    @property
    def faults(self) -> Faults:
        return self.service.faults

    @property
    def seen(self) -> Seen:
        return self.service.seen


@asynccontextmanager
async def running_proxy(
    upstream_address: str, *, server_credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[Proxy]:
    """A proxy on a free port in front of the gateway at `upstream_address`."""
    async with grpc.aio.insecure_channel(upstream_address) as channel:
        service = ProxyService(pb_grpc.JobServiceStub(channel))
        server = grpc.aio.server()
        pb_grpc.add_JobServiceServicer_to_server(service, server)
        if server_credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", server_credentials)
        await server.start()
        try:
            yield Proxy(f"127.0.0.1:{port}", service)
        finally:
            await server.stop(grace=None)
