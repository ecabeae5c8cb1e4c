"""`orchestrator list`: jobs as a table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from orchestrator.v1 import jobs_pb2 as pb
from rich.table import Table
from rich.text import Text

from services.cli.board import job_status_name, job_tone
from services.cli.display import STYLE
from services.cli.summary import kind_name


def jobs_table(jobs: Sequence[pb.Job]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("Job", no_wrap=True, min_width=36)
    table.add_column("Kind")
    table.add_column("Status", no_wrap=True)
    table.add_column("Done", justify="right")
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Message", overflow="ellipsis", no_wrap=True, max_width=50)
    for job in jobs:
        created = job.created_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            job.id,
            kind_name(job.kind),
            Text(job_status_name(job.status), style=STYLE[job_tone(job.status)]),
            f"{job.current_segment}/{job.total_tasks}",
            created,
            job.message,
        )
    if not jobs:
        table.caption = "no jobs"
    return table
