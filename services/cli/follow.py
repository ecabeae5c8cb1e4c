"""Follow a job to its end through a sink (the live view or JSON lines); the exit code."""

from __future__ import annotations

from orchestrator.v1 import jobs_pb2 as pb

from orchestrator_client import JobsClient
from services.cli import exits
from services.cli.board import Board
from services.cli.display import Sink
from services.cli.exits import ExitCode


async def follow_job(
    client: JobsClient,
    job_id: str,
    sink: Sink,
    *,
    after_cursor: int = 0,
    follow: bool = False,
    board: Board | None = None,
) -> ExitCode:
    """Show the job's events until its stream ends, then its summary; the job's exit code.

    The watch reconnects by itself when the gateway restarts (the sink hears of each try).
    """
    board = board or Board(job_id)
    if sink.wants_snapshot:
        board.load(await client.get(job_id))
    sink.begin(board)
    try:
        async for event in client.watch(
            job_id, after_cursor, follow, on_reconnect=sink.reconnecting
        ):
            line = board.apply(event)
            if (
                sink.wants_snapshot
                and event.type == pb.EVENT_TYPE_RETRY_REQUESTED
                and event.cursor > board.snapshot_cursor
            ):
                # Re-run tasks get new attempt budgets: take them from a fresh snapshot.
                board.load(await client.get(job_id))
            sink.event(board, event, line)
        job = await client.get(job_id)
        code = exits.for_job(job.status)
        sink.end(board, job, code)
        return code
    finally:
        sink.close()
