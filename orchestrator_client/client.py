"""`JobsClient`: the orchestrator's gRPC API (`orchestrator.v1.JobService`) for Python callers.

    async with JobsClient("127.0.0.1:50051", token=...) as client:
        started = await client.start_video(battle_arena_url=url, total_segments=5)
        async for event in client.watch(started.job_id):
            print(event.cursor, event.message)
        job = await client.get(started.job_id)

Starts are safe to retry: each carries an idempotency key (one per call), and a start that
failed with UNAVAILABLE or DEADLINE_EXCEEDED is sent again with the same key, so a gateway that
committed the job but died before answering returns that job instead of making a second one.
Watches reconnect by themselves from their last cursor (see `watching.py`).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import grpc
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from common.resilience.backoff import Backoff
from orchestrator_client.connection import DEFAULT_TARGET, Connection
from orchestrator_client.errors import (
    ClientError,
    DeadlineExceeded,
    Unavailable,
    from_rpc_error,
)
from orchestrator_client.watching import Reconnect, WatchItem, WatchPolicy, resumable_watch

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Delays between tries of a start or a watch reconnect: U(0, 0.25 s), U(0, 0.5 s), ... up to 4 s.
DEFAULT_BACKOFF = Backoff(initial=0.25, multiplier=2.0, cap=4.0, max_retries=0)
# Seconds a watch waits for anything (an event or a heartbeat) before presuming the stream dead.
HEARTBEAT_SECONDS = 15


class ServingStatus(StrEnum):
    """`grpc.health.v1` serving status of the gateway."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclass(frozen=True)
class StartedJob:
    """The answer to a start.

    `created` is the server's word for the last try: after a retry it may be False although this
    call's earlier try created the job (the retry then found it by its idempotency key).
    """

    job_id: str
    created: bool
    job: pb.Job
    idempotency_key: str
    attempts: int


class JobsClient:
    """An async client of `orchestrator.v1.JobService`; use as `async with JobsClient(...)`.

    `token` is sent as `authorization: Bearer <token>` with every call. TLS is on with `tls=True`
    (or when a CA or client certificate is given); `server_name` overrides the name checked
    against the server's certificate. `timeout` is the deadline of every unary call, in seconds.
    `start_attempts` bounds the tries of a start (and of opening a watch); a watch whose stream
    broke keeps reconnecting for up to `reconnect_timeout` seconds of one outage.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
        timeout: float = 30.0,
        start_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        reconnect_timeout: float = 60.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if start_attempts < 1:
            raise ValueError(f"start_attempts must be >= 1, got {start_attempts!r}")
        self.connection = Connection(
            target=target,
            token=token,
            tls=tls,
            ca_file=_path(ca_file),
            cert_file=_path(cert_file),
            key_file=_path(key_file),
            server_name=server_name,
        )
        self.timeout = timeout
        self.start_attempts = start_attempts
        self.backoff = backoff
        self.reconnect_timeout = reconnect_timeout
        self._credentials = self.connection.credentials() if self.connection.secure else None
        self._metadata = self.connection.metadata()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.JobServiceAsyncStub | None = None

    def __repr__(self) -> str:
        return f"JobsClient({self.connection!r})"

    async def __aenter__(self) -> Self:
        self._channel = self.connection.open_channel(self._credentials)
        self._stub = pb_grpc.JobServiceStub(self._channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._stub = None

    @property
    def stub(self) -> pb_grpc.JobServiceAsyncStub:
        if self._stub is None:
            raise RuntimeError("JobsClient is not open: use `async with JobsClient(...)`")
        return self._stub

    # -- starts --------------------------------------------------------------------------------

    async def start_video(
        self,
        *,
        battle_arena_url: str,
        total_segments: int = 0,
        prompt: str = "",
        segment_prompts: Sequence[str] = (),
        model: str = "",
        priority: pb.Priority.ValueType = pb.PRIORITY_UNSPECIFIED,
        model_arguments: Mapping[str, Any] | None = None,
        max_retries: int = 0,
        idempotency_key: str | None = None,
        max_concurrency: int = 0,
        deadline_seconds: int = 0,
        reuse_results: bool = False,
    ) -> StartedJob:
        """Record a video job (one task per segment); fields as in `StartVideoJobRequest`."""
        request = pb.StartVideoJobRequest(
            battle_arena_url=battle_arena_url,
            total_segments=total_segments,
            prompt=prompt,
            segment_prompts=list(segment_prompts),
            model=model,
            idempotency_key=idempotency_key or new_idempotency_key(),
            priority=priority,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            deadline_seconds=deadline_seconds,
            reuse_results=reuse_results,
        )
        if model_arguments:
            arguments = Struct()
            arguments.update(dict(model_arguments))
            request.model_arguments.CopyFrom(arguments)
        return await self._start(self.stub.StartVideoJob, request, request.idempotency_key)

    async def start_story(
        self,
        *,
        idea: str,
        total_segments: int,
        segments_per_set: int = 0,
        save_to_files: bool = False,
        output_directory: str = "",
        model: str = "",
        priority: pb.Priority.ValueType = pb.PRIORITY_UNSPECIFIED,
        max_retries: int = 0,
        idempotency_key: str | None = None,
        deadline_seconds: int = 0,
    ) -> StartedJob:
        """Record a story job (a plan, then sets); fields as in `StartStoryJobRequest`."""
        request = pb.StartStoryJobRequest(
            idea=idea,
            total_segments=total_segments,
            segments_per_set=segments_per_set,
            save_to_files=save_to_files,
            output_directory=output_directory,
            model=model,
            idempotency_key=idempotency_key or new_idempotency_key(),
            priority=priority,
            max_retries=max_retries,
            deadline_seconds=deadline_seconds,
        )
        return await self._start(self.stub.StartStoryJob, request, request.idempotency_key)

    async def _start(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, pb.StartJobResponse],
        request: Req,
        key: str,
    ) -> StartedJob:
        """Send a start, again with the same key after UNAVAILABLE or DEADLINE_EXCEEDED."""
        for attempt in range(1, self.start_attempts + 1):
            try:
                answer = await self._call(method, request)
            except (Unavailable, DeadlineExceeded) as exc:
                if attempt == self.start_attempts:
                    raise
                delay = self.backoff.delay(attempt)
                log.info("start failed (%s); same key again in %.2f s", exc.message, delay)
                await asyncio.sleep(delay)
                continue
            return StartedJob(answer.job_id, answer.created, answer.job, key, attempt)
        raise AssertionError("unreachable")

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, job_id: str, omit_tasks: bool = False) -> pb.Job:
        """The job, with its per-task state unless `omit_tasks`."""
        return await self._call(
            self.stub.GetJob, pb.GetJobRequest(job_id=job_id, omit_tasks=omit_tasks)
        )

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        kind: pb.JobKind.ValueType = pb.JOB_KIND_UNSPECIFIED,
        statuses: Sequence[pb.JobStatus.ValueType] = (),
    ) -> pb.ListJobsResponse:
        """One page of jobs, newest first (tasks omitted); `next_page_token` is "" on the last."""
        request = pb.ListJobsRequest(
            page_size=page_size, page_token=page_token, kind=kind, statuses=builtins.list(statuses)
        )
        return await self._call(self.stub.ListJobs, request)

    async def iter_jobs(
        self,
        *,
        page_size: int = 0,
        kind: pb.JobKind.ValueType = pb.JOB_KIND_UNSPECIFIED,
        statuses: Sequence[pb.JobStatus.ValueType] = (),
    ) -> AsyncIterator[pb.Job]:
        """Every job matching the filter, page after page, newest first."""
        token = ""
        while True:
            page = await self.list(
                page_size=page_size, page_token=token, kind=kind, statuses=statuses
            )
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    @overload
    def watch(
        self,
        job_id: str,
        after_cursor: int = 0,
        follow: bool = False,
        *,
        heartbeats: Literal[False] = False,
        heartbeat_seconds: int = ...,
        on_reconnect: Callable[[Reconnect], None] | None = None,
    ) -> AsyncIterator[pb.JobEvent]: ...

    @overload
    def watch(
        self,
        job_id: str,
        after_cursor: int = 0,
        follow: bool = False,
        *,
        heartbeats: Literal[True],
        heartbeat_seconds: int = ...,
        on_reconnect: Callable[[Reconnect], None] | None = None,
    ) -> AsyncIterator[WatchItem]: ...

    def watch(
        self,
        job_id: str,
        after_cursor: int = 0,
        follow: bool = False,
        *,
        heartbeats: bool = False,
        heartbeat_seconds: int = HEARTBEAT_SECONDS,
        on_reconnect: Callable[[Reconnect], None] | None = None,
    ) -> AsyncIterator[WatchItem]:
        """The job's events after `after_cursor` (history, then live), each once, in order.

        Ends after the job's terminal event (never, with `follow`). When the stream breaks with
        UNAVAILABLE or stays silent past its heartbeats, it reopens after the last cursor it
        delivered, with backoff; `on_reconnect` hears about each try. Heartbeats are yielded
        only with `heartbeats=True`. Other failures raise their `ClientError`.
        """
        stub = self.stub

        def open_stream(
            cursor: int,
        ) -> grpc.aio.UnaryStreamCall[pb.WatchJobRequest, pb.WatchJobResponse]:
            request = pb.WatchJobRequest(
                job_id=job_id,
                after_cursor=cursor,
                follow=follow,
                heartbeat_seconds=heartbeat_seconds,
            )
            return stub.WatchJob(request, metadata=self._metadata)

        policy = WatchPolicy(
            backoff=self.backoff,
            connect_attempts=self.start_attempts,
            reconnect_timeout=self.reconnect_timeout,
            idle_timeout=2 * heartbeat_seconds + 10,
        )
        return resumable_watch(
            open_stream,
            job_id=job_id,
            after_cursor=after_cursor,
            heartbeats=heartbeats,
            policy=policy,
            token=self.connection.token,
            on_reconnect=on_reconnect,
        )

    # -- changes -------------------------------------------------------------------------------

    async def retry_failed(
        self,
        job_id: str,
        max_retries: int = 0,
        *,
        task_indices: Sequence[int] = (),
        regenerate: bool = False,
    ) -> pb.RetryFailedResponse:
        """Re-run the failed, skipped and cancelled tasks of a finished job, or only the tasks
        `task_indices` names (`regenerate`: succeeded ones too, their results kept in history)."""
        request = pb.RetryFailedRequest(
            job_id=job_id,
            max_retries=max_retries,
            task_indices=list(task_indices),
            regenerate=regenerate,
        )
        return await self._call(self.stub.RetryFailed, request)

    async def cancel(self, job_id: str) -> pb.Job:
        """Cancel every unfinished task of the job."""
        return await self._call(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    async def health(self, service: str = "") -> ServingStatus:
        """The gateway's `grpc.health.v1` status ("" is the whole server)."""
        if self._channel is None:
            raise RuntimeError("JobsClient is not open: use `async with JobsClient(...)`")
        health = health_pb2_grpc.HealthStub(self._channel)
        answer = await self._call(health.Check, health_pb2.HealthCheckRequest(service=service))
        return ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, token=self.connection.token) from None


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or value == "" else Path(value)


__all__ = ["ClientError", "JobsClient", "ServingStatus", "StartedJob", "new_idempotency_key"]
