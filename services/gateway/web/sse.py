"""`GET /jobs/{job_id}/events`: a job's events as Server-Sent Events, resumable exactly.

The stream is `JobsCore.watch(..., follow=True)`, the same per-job feed as gRPC WatchJob, so
the owner check, history replay and live batching are the core's. Each event is one SSE message
whose `id:` is the event's cursor; a browser that reconnects sends it back as `Last-Event-ID`,
and the stream resumes right after it (nothing missed, nothing twice). A client that opens a
new stream itself passes `?after=<cursor>` instead; `Last-Event-ID` wins when both are given.
Idle streams get a comment line every `HEARTBEAT` seconds (`?heartbeat=` picks another, as
WatchJob's heartbeat_seconds), so proxies keep them open. The stream ends (after an
`event: gone` message) only when the job is deleted, or when the gateway shuts down (the
browser then reconnects, to this gateway or another).

Each stream holds one of its caller's concurrent-stream slots (the limit WatchJob streams
share) and counts in the `watchers` gauge with transport="sse".
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from common import metrics
from common.auth import Caller
from common.domain.records import EventRecord
from common.errors import InvalidArgument
from services.gateway.core import Heartbeat, JobsCore
from services.gateway.grpc_guard import report_unexpected
from services.gateway.http_guard import HttpGuard, caller_of
from services.gateway.progress import Batch

log = logging.getLogger(__name__)

HEARTBEAT = 15
# How often the reaper looks for streams whose client hung up.
REAP_SECONDS = 1.0
# How long a browser waits before reconnecting (the SSE `retry:` field), in milliseconds.
RECONNECT_MS = 1000
MAX_CURSOR_DIGITS = 16
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def stream_key(caller: Caller, request: web.Request) -> str:
    """The caller's name, or its address when the service is anonymous (as the guard does)."""
    return caller.name if not caller.anonymous else f"peer:{request.remote}"


def resume_cursor(request: web.Request) -> int:
    """The cursor to resume after: `Last-Event-ID`, else `?after=`, else 0."""
    for name, raw in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after", request.query.get("after")),
    ):
        if raw is None or raw == "":
            continue
        if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_CURSOR_DIGITS:
            raise InvalidArgument(name, "must be an event cursor (a whole number)")
        return int(raw)
    return 0


@functools.lru_cache(maxsize=10_000)
def encode_event(event: EventRecord) -> bytes:
    """One SSE message for `event`; watchers of a job share its event records, so each is
    encoded once however many streams send it. JSON has no raw new lines, so one `data:`."""
    data = {
        "cursor": event.seq,
        "type": event.type,
        "created_at": event.created_at,
        "task_index": event.task_index,
        "task_status": event.task_status,
        "job_status": event.job_status,
        "message": event.message,
        "error_class": event.error_class,
        "details": event.details or {},
    }
    body = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    return f"id: {event.seq}\ndata: {body}\n\n".encode()


def encode_events(events: Sequence[EventRecord]) -> bytes:
    """The SSE messages of `events`, one per event."""
    return b"".join(map(encode_event, events))


class EventStreams:
    """The SSE route and the streams it has open.

    aiohttp does not cancel a handler whose client hung up, and a write is the first to notice
    it; so one reaper task looks at every open stream's connection each `REAP_SECONDS` and ends
    those whose client is gone, which gives their slot back within that time rather than at
    the next heartbeat. On shutdown every stream ends at once.
    """

    def __init__(self, core: JobsCore, guard: HttpGuard, *, heartbeat: int = HEARTBEAT) -> None:
        self.core = core
        self.guard = guard
        self.heartbeat = heartbeat
        self._pumps: dict[asyncio.Task[None], web.Request] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        after = resume_cursor(request)
        heartbeat = _heartbeat(request, self.heartbeat)
        key = stream_key(caller, request)
        self.guard.limits.open_stream(key)  # ResourceExhausted: 429 from the guard
        gauge = metrics.watchers.labels("sse")
        gauge.inc()
        try:
            # Validates (job, owner, cursor) before anything is sent: errors are plain 4xx.
            stream = await self.core.watch(
                request.match_info["job_id"],
                caller=caller,
                after=after,
                follow=True,
                heartbeat=heartbeat,
            )
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            await response.write(f"retry: {RECONNECT_MS}\n: events after {after}\n\n".encode())
            pump = asyncio.create_task(self._pump(response, stream), name="sse-pump")
            self._pumps[pump] = request
            pump.add_done_callback(self._forget)
            self._start_reaper()
            try:
                await asyncio.wait({pump})
            finally:
                pump.cancel()
            return response
        finally:
            gauge.dec()
            self.guard.limits.close_stream(key)

    def _forget(self, pump: asyncio.Task[None]) -> None:
        self._pumps.pop(pump, None)

    async def _pump(
        self, response: web.StreamResponse, stream: AsyncIterator[Batch | Heartbeat]
    ) -> None:
        try:
            async for item in stream:
                if isinstance(item, Heartbeat):
                    await response.write(f": heartbeat {item.cursor}\n\n".encode())
                else:
                    # Encoded once, shared by every stream at the batch's cursor.
                    await response.write(item.derive("sse", encode_events))
            # follow=True ends only when the job is gone (retention deleted it).
            await response.write(b"event: gone\ndata: {}\n\n")
        except ConnectionError:
            pass  # the client left; its slot is given back by the handler
        except Exception as exc:
            report_unexpected(exc, "SSE event stream")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()  # leaves the job's feed now, not when collected

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="sse-reaper")

    async def _reap(self) -> None:
        while self._pumps:
            await asyncio.sleep(REAP_SECONDS)
            for pump, request in list(self._pumps.items()):
                if request.transport is None or request.transport.is_closing():
                    pump.cancel()

    async def close_all(self, _app: web.Application) -> None:
        """`on_shutdown`: end every open stream now, so the server's shutdown need not wait
        for them (clients reconnect, with their cursor, once a gateway serves again)."""
        if self._reaper is not None:
            self._reaper.cancel()
        pumps = list(self._pumps)
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.wait(pumps)


def _heartbeat(request: web.Request, default: int) -> int:
    """`?heartbeat=<seconds>` (the core checks its range), as WatchJob's heartbeat_seconds."""
    raw = request.query.get("heartbeat", "")
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4:
        raise InvalidArgument("heartbeat", "must be a whole number of seconds")
    return int(raw)
