"""Client side of the SSE watchers: `GET /jobs/{id}/events` read with aiohttp, as a browser's
EventSource would, until the job's terminal event.

Latency is measured as for gRPC watchers (bench.jobs.watch): receive wall time of the chunk an
event arrived in, minus the event's `created_at`; events created before the stream was opened
are history replay and counted apart. The stream is `follow=True` on the server (it stays open
after the job ends), so the watcher hangs up itself after the terminal event.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
from orchestrator.v1 import jobs_pb2 as pb

from bench.jobs import STALL_AFTER, JobStalled, Watch

# The server's encoding (services/gateway/web/sse.py): compact JSON, keys in a fixed order.
_CREATED = re.compile(rb'"created_at":([0-9.eE+-]+)')
_TERMINAL = re.compile(
    rb'"type":"job_status".*"job_status":"(completed|partially_failed|failed|cancelled)"'
)


def sse_session(connections: int) -> aiohttp.ClientSession:
    """One session for every SSE watcher: one TCP connection each, no pool limit."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections + 10),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )


async def watch_sse(
    session: aiohttp.ClientSession,
    http_url: str,
    job_id: str,
    *,
    give_up_after: float,
    stall_after: float = STALL_AFTER,
    connected: list[float] | None = None,
) -> Watch:
    """One SSE watcher. With `connected`, events count as live only from when the stream was
    established (its first bytes, sent once the server subscribed it), and the time that took
    is appended there; otherwise from when it was requested (as bench.jobs.watch)."""
    seen = Watch(opened_at=time.time())
    requested = seen.opened_at
    loop = asyncio.get_running_loop()
    url = f"{http_url}/jobs/{job_id}/events"
    try:
        async with (
            asyncio.timeout(give_up_after),
            asyncio.timeout(stall_after) as idle,
            session.get(url, headers={"Accept": "text/event-stream"}) as response,
        ):
            if response.status != 200:
                raise JobStalled(
                    f"SSE for {job_id}: HTTP {response.status} {await response.text()}"
                )
            pending = b""
            async for chunk in response.content.iter_any():
                received = time.time()
                if connected is not None and requested == seen.opened_at:
                    seen.opened_at = received
                    connected.append(received - requested)
                pending += chunk
                cut = pending.rfind(b"\n\n") + 2
                if cut < 2:
                    continue  # no complete message yet
                complete, pending = pending[:cut], pending[cut:]
                if _take(seen, complete, received):
                    seen.ended_at = time.perf_counter()
                    return seen
                idle.reschedule(loop.time() + stall_after)
    except TimeoutError:
        raise JobStalled(
            f"SSE for {job_id}: no event for {stall_after:.0f}s or not finished after"
            f" {give_up_after:.0f}s ({seen.events} events seen)"
        ) from None
    raise JobStalled(f"SSE for {job_id} ended before the job's terminal event")


def _take(seen: Watch, messages: bytes, received: float) -> bool:
    """Count the complete SSE messages of one read; True when the job's terminal event is
    among them (nothing after it is counted: the server sends nothing after it either).

    Only what the figure needs is read (each event's `created_at`, and the status of a
    job_status event), with regular expressions over the whole read rather than a JSON parse
    per event: 500 watchers in one Python process would otherwise measure themselves, not the
    gateway (a browser parses its one stream in its own process).
    """
    terminal = _TERMINAL.search(messages)
    if terminal is not None:
        messages = messages[: messages.find(b"\n\n", terminal.end()) + 2]
    opened = seen.opened_at
    for raw in _CREATED.findall(messages):
        created = float(raw)
        if created >= opened:
            seen.live_latencies.append(received - created)
        else:
            seen.replayed += 1
        seen.events += 1
    if terminal is None:
        return False
    seen.terminal_status = pb.JobStatus.Value(f"JOB_STATUS_{terminal.group(1).decode().upper()}")
    return True
