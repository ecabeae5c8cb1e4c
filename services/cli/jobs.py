"""The commands that follow, show, list, re-run and cancel jobs, and ask the gateway's health."""

from __future__ import annotations

from typing import Annotated

import typer
from orchestrator.v1 import jobs_pb2 as pb

from orchestrator_client import JobsClient, ServingStatus
from services.cli.board import Board
from services.cli.context import JobId, MaxRetries, exit_with, globals_of, sink
from services.cli.display import json_line, message_dict, task_table
from services.cli.exits import ExitCode
from services.cli.follow import follow_job
from services.cli.listing import jobs_table
from services.cli.options import Kind, Status
from services.cli.summary import render_summary


def watch_command(
    ctx: typer.Context,
    job_id: JobId,
    after: Annotated[
        int,
        typer.Option(min=0, help="Show only events after this cursor (0: the whole history)."),
    ] = 0,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="Keep watching after the job ended (to see a later retry); Ctrl-C."
        ),
    ] = False,
) -> None:
    """Follow a job: its history first, then live events, until it ends.

    The exit code tells how the job ended (see `orchestrator --help`).
    """
    g = globals_of(ctx)

    async def work(client: JobsClient) -> ExitCode:
        return await follow_job(client, job_id, sink(g), after_cursor=after, follow=follow)

    exit_with(g.run(work))


def get(
    ctx: typer.Context,
    job_id: JobId,
    no_tasks: Annotated[
        bool, typer.Option("--no-tasks", help="Leave out the per-task states.")
    ] = False,
) -> None:
    """Show a job: its status, counts and per-task states (attempts, errors, results)."""
    g = globals_of(ctx)

    async def work(client: JobsClient) -> ExitCode:
        job = await client.get(job_id, omit_tasks=no_tasks)
        if g.json:
            print(json_line(message_dict(job)), flush=True)
            return ExitCode.OK
        board = Board(job.id)
        board.load(job)
        out = g.out
        if job.tasks:
            out.print(task_table(board, limit=50))
        out.print(render_summary(job, ExitCode.OK), soft_wrap=True)
        return ExitCode.OK

    exit_with(g.run(work))


def list_command(
    ctx: typer.Context,
    *,
    kind: Annotated[
        Kind | None, typer.Option(case_sensitive=False, help="Only jobs of this kind.")
    ] = None,
    status: Annotated[
        list[Status] | None,
        typer.Option(case_sensitive=False, help="Only jobs in this status; repeatable."),
    ] = None,
    page_size: Annotated[int, typer.Option(min=1, max=500, help="Jobs per page.")] = 20,
    page_token: Annotated[
        str, typer.Option(help="Continue from a previous page's next-page token.")
    ] = "",
    all_pages: Annotated[bool, typer.Option("--all", help="Every page, not just one.")] = False,
) -> None:
    """List jobs, newest first."""
    g = globals_of(ctx)
    statuses = [s.proto for s in status or []]
    kind_value = kind.proto if kind else pb.JOB_KIND_UNSPECIFIED

    async def work(client: JobsClient) -> ExitCode:
        if all_pages:
            jobs = [
                job
                async for job in client.iter_jobs(
                    page_size=page_size, kind=kind_value, statuses=statuses
                )
            ]
            token = ""
        else:
            page = await client.list(
                page_size=page_size, page_token=page_token, kind=kind_value, statuses=statuses
            )
            jobs, token = list(page.jobs), page.next_page_token
        if g.json:
            data = {"jobs": [message_dict(j) for j in jobs], "next_page_token": token}
            print(json_line(data), flush=True)
        else:
            g.out.print(jobs_table(jobs))
            if token:
                g.out.print(f"more: orchestrator list --page-token {token}", markup=False)
        return ExitCode.OK

    exit_with(g.run(work))


def retry(
    ctx: typer.Context,
    job_id: JobId,
    *,
    max_retries: MaxRetries = 0,
    task: Annotated[
        list[int] | None,
        typer.Option(
            "--task",
            "-t",
            min=0,
            help="Re-run only this task (a segment's or set's index); repeatable.",
        ),
    ] = None,
    regenerate: Annotated[
        bool,
        typer.Option(
            "--regenerate",
            help="With --task: run succeeded tasks again too (their results stay in history).",
        ),
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", help="Follow the re-run to its end.")
    ] = False,
) -> None:
    """Re-run the failed, skipped and cancelled tasks of a finished job.

    Successful tasks are generated again only when named with `--task` and `--regenerate`.
    With `--watch`, follows the re-run and exits by the job's new outcome.

    ```
    orchestrator retry JOB_ID --task 3 --regenerate --watch
    ```
    """
    g = globals_of(ctx)
    if regenerate and not task:
        g.error("--regenerate needs --task: name the tasks to run again", ExitCode.USAGE, "USAGE")
        exit_with(ExitCode.USAGE)

    async def work(client: JobsClient) -> ExitCode:
        before = await client.get(job_id, omit_tasks=True)
        answer = await client.retry_failed(
            job_id, max_retries, task_indices=task or (), regenerate=regenerate
        )
        if watch and answer.retried_count:
            return await follow_job(client, job_id, sink(g), after_cursor=before.last_cursor)
        if g.json:
            print(json_line(message_dict(answer)), flush=True)
        else:
            tasks = ", ".join(str(i) for i in answer.retried_tasks)
            g.out.print(f"{answer.message}" + (f" (tasks {tasks})" if tasks else ""))
        return ExitCode.OK

    exit_with(g.run(work))


def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel every unfinished task of a job (in-flight generations are cancelled too)."""
    g = globals_of(ctx)

    async def work(client: JobsClient) -> ExitCode:
        job = await client.cancel(job_id)
        if g.json:
            print(json_line(message_dict(job)), flush=True)
        else:
            g.out.print(render_summary(job, ExitCode.OK), soft_wrap=True)
        return ExitCode.OK

    exit_with(g.run(work))


def health(ctx: typer.Context) -> None:
    """Ask the gateway's health service; exit 0 when it is SERVING, 6 otherwise."""
    g = globals_of(ctx)

    async def work(client: JobsClient) -> ExitCode:
        status = await client.health()
        if g.json:
            print(json_line({"status": status.value}), flush=True)
        else:
            g.out.print(f"{g.target}: {status.value}", markup=False)
        return ExitCode.OK if status == ServingStatus.SERVING else ExitCode.UNREACHABLE

    exit_with(g.run(work))
