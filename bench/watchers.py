"""A fleet of watchers in a process of its own: `python -m bench.watchers ...`.

1000 watchers decoding ~1.5 million events in the benchmark's one Python process would measure
that process (it saturates a core; see bench/README.md), not the gateway. So the big progress
run puts each transport's watchers in a child process: it connects, says `ready` on stdout,
reads the job id from stdin, opens every watcher at once, and writes what they saw to
`<out>.json` (counts, final statuses) and `<out>.lat` (every live latency, float64 seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from bench.jobs import TERMINAL, JobStalled, Watch
from bench.procs import ROOT
from bench.sse import sse_session, watch_sse
from bench.stack import Stub

READY_WITHIN = 60.0


@dataclass
class FleetResult:
    transport: str
    watchers: int
    events: int
    replayed: int
    statuses: list[int | None]
    latencies: array[float]
    finished_at: float  # wall clock when the last watcher saw the terminal event
    cpu_seconds: float  # the child's CPU from the job id to the end
    connected: list[float]  # per watcher: seconds from asking for the stream to its first bytes


class Fleet:
    """The parent's handle on one child process of watchers."""

    def __init__(self, transport: str, count: int, out: Path) -> None:
        self.transport = transport
        self.count = count
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, grpc_addr: str, http_url: str, give_up: float) -> None:
        """Start the child and wait until it is connected and ready for the job id."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.watchers",
            self.transport, str(self.count), grpc_addr, http_url, str(give_up), str(self.out),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(READY_WITHIN):
            line = await self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"{self.transport} watchers did not start: {line!r}")

    def go(self, job_id: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{job_id}\n".encode())

    async def result(self) -> FleetResult:
        assert self.proc is not None
        code = await self.proc.wait()
        if code != 0:
            raise RuntimeError(f"{self.transport} watchers exited with {code}")
        summary = json.loads(self.out.with_suffix(".json").read_text())
        if summary.get("error"):
            raise RuntimeError(f"{self.transport} watchers: {summary['error']}")
        latencies = array("d")
        latencies.frombytes(self.out.with_suffix(".lat").read_bytes())
        return FleetResult(
            transport=self.transport,
            watchers=summary["watchers"],
            events=summary["events"],
            replayed=summary["replayed"],
            statuses=summary["statuses"],
            latencies=latencies,
            finished_at=summary["finished_at"],
            cpu_seconds=summary["cpu_seconds"],
            connected=summary["connected"],
        )

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def lean_watch(
    stub: Stub, job_id: str, give_up_after: float, connected: list[float]
) -> Watch:
    """bench.jobs.watch with only what the latency figure needs: each event's `created_at`,
    and whether the job ended (its terminal event is the last it writes). Events count as
    live from the first answer on (the history the server had when it subscribed the stream
    comes first); the time until then is appended to `connected`."""
    seen = Watch(opened_at=time.time())
    requested = opened = seen.opened_at
    latencies = seen.live_latencies
    try:
        async with asyncio.timeout(give_up_after):
            async for item in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
                events = item.events
                if not events:
                    continue  # a heartbeat
                received = time.time()
                if opened == requested:
                    opened = seen.opened_at = received
                    connected.append(received - requested)
                for event in events:
                    stamp = event.created_at
                    created = stamp.seconds + stamp.nanos * 1e-9
                    if created >= opened:
                        latencies.append(received - created)
                    else:
                        seen.replayed += 1
                seen.events += len(events)
                last = events[-1]
                if last.type == pb.EVENT_TYPE_JOB_STATUS and last.job_status in TERMINAL:
                    seen.terminal_status = last.job_status
                    return seen
    except TimeoutError:
        raise JobStalled(f"job {job_id} not finished after {give_up_after:.0f}s") from None
    raise JobStalled(f"WatchJob of {job_id} ended before the job's terminal event")


async def _child(
    transport: str, count: int, grpc_addr: str, http_url: str, give_up: float, out: Path
) -> None:
    loop = asyncio.get_running_loop()
    summary: dict[str, Any] = {"watchers": count}
    async with (
        grpc.aio.insecure_channel(grpc_addr) as channel,
        sse_session(count) as session,
    ):
        stub = pb_grpc.JobServiceStub(channel)
        print("ready", flush=True)
        job_id = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        cpu_at_start = time.process_time()
        connected: list[float] = []
        try:
            async with asyncio.TaskGroup() as tasks:
                if transport == "grpc":
                    running = [
                        tasks.create_task(lean_watch(stub, job_id, give_up, connected))
                        for _ in range(count)
                    ]
                else:
                    running = [
                        tasks.create_task(
                            watch_sse(
                                session,
                                http_url,
                                job_id,
                                give_up_after=give_up,
                                connected=connected,
                            )
                        )
                        for _ in range(count)
                    ]
            seen: list[Watch] = [task.result() for task in running]
        except Exception as exc:  # reported to the parent, which fails the scenario
            summary["error"] = f"{type(exc).__name__}: {exc}"
            out.with_suffix(".json").write_text(json.dumps(summary))
            return
    latencies = array("d", (s for one in seen for s in one.live_latencies))
    out.with_suffix(".lat").write_bytes(latencies.tobytes())
    summary.update(
        events=sum(one.events for one in seen),
        replayed=sum(one.replayed for one in seen),
        statuses=[one.terminal_status for one in seen],
        finished_at=time.time(),
        cpu_seconds=time.process_time() - cpu_at_start,
        connected=connected,
    )
    out.with_suffix(".json").write_text(json.dumps(summary))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watchers")
    parser.add_argument("transport", choices=("grpc", "sse"))
    parser.add_argument("count", type=int)
    parser.add_argument("grpc_addr")
    parser.add_argument("http_url")
    parser.add_argument("give_up", type=float)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    uvloop.run(
        _child(args.transport, args.count, args.grpc_addr, args.http_url, args.give_up, args.out)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
