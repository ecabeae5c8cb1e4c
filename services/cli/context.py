"""What every command shares: the global options of the invocation, its exit, where its
events go, and the parameter types several commands take."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer

from services.cli.display import JsonSink, LiveSink, Sink
from services.cli.exits import ExitCode
from services.cli.options import Globals, Priority


def globals_of(ctx: typer.Context) -> Globals:
    assert isinstance(ctx.obj, Globals)
    return ctx.obj


def exit_with(code: ExitCode) -> NoReturn:
    raise typer.Exit(int(code))


def sink(g: Globals) -> Sink:
    return JsonSink(sys.stdout, sys.stderr) if g.json else LiveSink(g.out)


WatchFlag = Annotated[
    bool,
    typer.Option(
        "--watch/--no-watch",
        help="Follow the job to its end (exit code by its outcome), or only print its id.",
    ),
]
MaxRetries = Annotated[
    int,
    typer.Option(
        min=0, max=10, help="Retries per task after its first attempt (0: the server default)."
    ),
]
PriorityOption = Annotated[
    Priority | None, typer.Option(case_sensitive=False, help="Queue priority.")
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option(
        help="Reuse a key to get the same job back instead of a new one (default: a new key "
        "per command, reused by its own retries)."
    ),
]
JobId = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]
MaxConcurrency = Annotated[
    int,
    typer.Option(
        min=0,
        help="Provider slots this job may hold at once (0: the server's cap, MAX_JOB_CONCURRENCY).",
    ),
]
Deadline = Annotated[
    int,
    typer.Option(
        "--deadline",
        min=0,
        help="Seconds the job may take: attempts that cannot finish in time are not started "
        "and end DEADLINE_EXCEEDED (retry can still run them). 0: none.",
    ),
]
