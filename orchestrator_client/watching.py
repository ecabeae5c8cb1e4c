"""A WatchJob stream that survives gateway restarts: reopened from the last cursor it delivered.

The server numbers every event of a job (cursor 1, 2, ...) and `WatchJob(after_cursor=N)` sends
the events after N, history first. So when the stream breaks with UNAVAILABLE (the gateway was
killed, restarted or is draining) or goes silent for longer than heartbeats allow, the watcher
waits a backoff delay and asks again after the last cursor it handed out: no event is missed and
none is delivered twice. It ends when the server ends the stream (the job's terminal event was
sent, unless following).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from orchestrator.v1 import jobs_pb2 as pb

from common.resilience.backoff import Backoff
from orchestrator_client.errors import ClientError, Unavailable, from_rpc_error

WatchItem: TypeAlias = pb.JobEvent | pb.Heartbeat
OpenStream: TypeAlias = Callable[
    [int], "grpc.aio.UnaryStreamCall[pb.WatchJobRequest, pb.WatchJobResponse]"
]


@dataclass(frozen=True)
class Reconnect:
    """The stream broke; it is reopened after `delay` seconds, after `after_cursor`."""

    job_id: str
    after_cursor: int
    failures: int
    """Failed tries in a row so far (1 for the first reconnect after a break)."""
    delay: float
    error: ClientError


@dataclass(frozen=True)
class WatchPolicy:
    """How hard a watcher tries before giving up."""

    backoff: Backoff
    connect_attempts: int
    """Tries before the first answer: a gateway that never answered is reported quickly."""
    reconnect_timeout: float
    """Seconds a broken stream may stay broken (one outage) before the watcher gives up."""
    idle_timeout: float
    """Seconds without any event or heartbeat after which the stream is presumed dead."""


async def resumable_watch(
    open_stream: OpenStream,
    *,
    job_id: str,
    after_cursor: int,
    heartbeats: bool,
    policy: WatchPolicy,
    token: str | None = None,
    on_reconnect: Callable[[Reconnect], None] | None = None,
) -> AsyncIterator[WatchItem]:
    """Events (and heartbeats if asked) of one job, in cursor order, each once."""
    loop = asyncio.get_running_loop()
    cursor = after_cursor
    answered = False  # the gateway answered at least once on this watch
    failures = 0
    broken_since: float | None = None
    while True:
        call = open_stream(cursor)
        responses = aiter(call)
        try:
            while True:
                try:
                    async with asyncio.timeout(policy.idle_timeout):
                        item = await anext(responses)
                except StopAsyncIteration:
                    return  # the server ended the stream: the job is finished
                answered, failures, broken_since = True, 0, None
                for event in item.events:
                    if event.cursor <= cursor:  # never hand out an event twice
                        continue
                    cursor = event.cursor
                    yield event
                if heartbeats and not item.events and item.HasField("heartbeat"):
                    yield item.heartbeat
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, token=token)
            if not isinstance(error, Unavailable):
                raise error from None
        except TimeoutError:
            error = Unavailable(
                f"no event or heartbeat from the gateway for {policy.idle_timeout:g} s"
            )
        finally:
            call.cancel()
        failures += 1
        now = loop.time()
        broken_since = now if broken_since is None else broken_since
        if (not answered and failures >= policy.connect_attempts) or (
            answered and now - broken_since > policy.reconnect_timeout
        ):
            raise error
        delay = policy.backoff.delay(failures)
        if on_reconnect is not None:
            on_reconnect(Reconnect(job_id, cursor, failures, delay, error))
        await asyncio.sleep(delay)
