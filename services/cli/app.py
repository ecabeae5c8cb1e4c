"""The commands of `orchestrator` (typer): submit, follow, inspect, retry and cancel jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from orchestrator.v1 import jobs_pb2 as pb

from common.auth import Role, Tokens, hash_entry, new_token
from orchestrator_client import DEFAULT_HTTP_URL, DEFAULT_TARGET, JobsClient, ServingStatus
from orchestrator_client.client import StartedJob
from orchestrator_client.uploads import upload_image
from services.cli.board import Board
from services.cli.display import JsonSink, LiveSink, Sink, json_line, message_dict, task_table
from services.cli.exits import EXIT_CODES_HELP, ExitCode
from services.cli.follow import follow_job
from services.cli.listing import jobs_table
from services.cli.options import Globals, Kind, Priority, Status, UsageError
from services.cli.summary import render_summary

HELP = """\
Submit generation jobs to the orchestrator and follow them live.

`video` and `story` start a job and follow it to its end: a progress bar, a table of the
tasks' states (attempts, last error) and a log of retries, deferrals and circuit-breaker
changes as they happen, then a summary with the results. If the gateway restarts while a job
is followed, the CLI reconnects by itself and misses no event. With `--json`, stdout carries
only JSON: one line per event (proto3 JSON, .proto field names, int64 values as strings),
then one `{"summary": ...}` line.
"""

EPILOG = f"""\
```
{EXIT_CODES_HELP}
```

Environment: ORCHESTRATOR_TARGET, ORCHESTRATOR_TOKEN, ORCHESTRATOR_HTTP_URL and the other
`ORCHESTRATOR_*` variables named under each option.
"""

app = typer.Typer(
    name="orchestrator",
    help=HELP,
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONNECTION = "Connection"
TLS = "TLS"
OUTPUT = "Output"


@app.callback()
def options(
    ctx: typer.Context,
    *,
    target: Annotated[
        str,
        typer.Option(
            envvar="ORCHESTRATOR_TARGET",
            help="The gateway's gRPC address, host:port.",
            rich_help_panel=CONNECTION,
        ),
    ] = DEFAULT_TARGET,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ORCHESTRATOR_TOKEN",
            help="API token, sent as `authorization: Bearer TOKEN`. Prefer the environment "
            "variable: a command line is visible to other users of the machine.",
            show_default=False,
            rich_help_panel=CONNECTION,
        ),
    ] = None,
    http_url: Annotated[
        str,
        typer.Option(
            envvar="ORCHESTRATOR_HTTP_URL",
            help="The gateway's HTTP side port, where `video --arena FILE` uploads the image.",
            rich_help_panel=CONNECTION,
        ),
    ] = DEFAULT_HTTP_URL,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="ORCHESTRATOR_TIMEOUT",
            min=0.1,
            help="Seconds each call may take (watching a job is not limited).",
            rich_help_panel=CONNECTION,
        ),
    ] = 30.0,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            envvar="ORCHESTRATOR_TLS",
            help="Connect with TLS (implied by --ca-file or --cert-file).",
            rich_help_panel=TLS,
        ),
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ORCHESTRATOR_CA_FILE",
            help="PEM file of the CA that signed the gateway's certificate (default: the "
            "system's roots).",
            rich_help_panel=TLS,
        ),
    ] = None,
    cert_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ORCHESTRATOR_CERT_FILE",
            help="PEM client certificate, for gateways that require one (with --key-file).",
            rich_help_panel=TLS,
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ORCHESTRATOR_KEY_FILE",
            help="PEM private key of --cert-file.",
            rich_help_panel=TLS,
        ),
    ] = None,
    server_name: Annotated[
        str | None,
        typer.Option(
            envvar="ORCHESTRATOR_SERVER_NAME",
            help="Name to check the gateway's certificate against, when it differs from the "
            "target's host.",
            rich_help_panel=TLS,
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON only: JSON lines for events and a final summary line.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
) -> None:
    ctx.obj = Globals(
        target=target,
        token=token or None,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_name=server_name,
        timeout=timeout,
        json=json_output,
        http_url=http_url,
    )


def _globals(ctx: typer.Context) -> Globals:
    assert isinstance(ctx.obj, Globals)
    return ctx.obj


def _exit(code: ExitCode) -> NoReturn:
    raise typer.Exit(int(code))


def _sink(g: Globals) -> Sink:
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


async def _started(client: JobsClient, g: Globals, started: StartedJob, watch: bool) -> ExitCode:
    if watch:
        return await follow_job(client, started.job_id, _sink(g))
    if g.json:
        data = {
            "job_id": started.job_id,
            "created": started.created,
            "idempotency_key": started.idempotency_key,
        }
        print(json_line(data), flush=True)
    else:
        print(started.job_id, flush=True)
    return ExitCode.OK


def _model_arguments(pairs: list[str]) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg {pair!r}: expected KEY=VALUE")
        try:
            arguments[key] = json.loads(raw)
        except ValueError:
            arguments[key] = raw
    return arguments


def _arena_file(arena: str) -> Path | None:
    """None for an http(s) URL (sent as it is); else the local image file to upload."""
    if arena.startswith(("http://", "https://")):
        return None
    path = Path(arena).expanduser()
    if not path.is_file():
        raise UsageError(f"--arena {arena!r}: neither an http(s) URL nor a readable file")
    return path


async def _arena_url(g: Globals, arena: str, path: Path | None) -> str:
    """The arena's URL: as given, or where the gateway serves the uploaded file."""
    if path is None:
        return arena
    url = await upload_image(path, http_url=g.http_url, token=g.token, ca_file=g.ca_file)
    if not g.json:
        g.err.print(f"uploaded {path.name} → {url}", markup=False)
    return url


@app.command()
def video(
    ctx: typer.Context,
    *,
    arena: Annotated[
        str,
        typer.Option(
            "--arena",
            "-a",
            help="The battle-arena image every segment starts from: an http(s) URL, or a "
            "local PNG, JPEG or WebP file (uploaded through the gateway first).",
            show_default=False,
        ),
    ],
    segments: Annotated[
        int | None,
        typer.Option(
            "--segments",
            "-n",
            min=1,
            help="Number of segments (default 5, or one per --segment-prompt).",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str, typer.Option(help='Prompt shared by all segments ("segment i of N" is appended).')
    ] = "",
    segment_prompt: Annotated[
        list[str] | None,
        typer.Option(help="An explicit prompt per segment; repeat once per segment."),
    ] = None,
    model: Annotated[str, typer.Option(help="fal model id (default: the server's).")] = "",
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra model argument KEY=VALUE, passed to fal (VALUE as JSON if it parses, "
            'e.g. duration=\\"5\\"); repeatable.'
        ),
    ] = None,
    priority: PriorityOption = None,
    max_retries: MaxRetries = 0,
    max_concurrency: MaxConcurrency = 0,
    deadline: Deadline = 0,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--no-reuse",
            help="Take the result of an identical earlier segment (same model and arguments, "
            "within the server's REUSE_TTL) instead of paying for it again.",
        ),
    ] = False,
    idempotency_key: IdempotencyKey = None,
    watch: WatchFlag = True,
) -> None:
    """Start a video job: one fal.ai generation per segment, all from one arena image.

    Follows the job to its end unless `--no-watch`.

    Examples:

    ```
    orchestrator video --arena https://example.com/arena.png -n 5 --prompt "Robots clash"
    orchestrator video --arena ./arena.png --no-watch
    orchestrator --json video -a ./arena.png | jq -c 'select(.summary) | .summary.results'
    ```
    """
    g = _globals(ctx)
    prompts = segment_prompt or []
    try:
        arena_file = _arena_file(arena)
    except UsageError as exc:
        g.error(str(exc), ExitCode.USAGE, "USAGE")
        _exit(ExitCode.USAGE)

    async def work(client: JobsClient) -> ExitCode:
        url = await _arena_url(g, arena, arena_file)
        started = await client.start_video(
            battle_arena_url=url,
            total_segments=segments if segments is not None else (0 if prompts else 5),
            prompt=prompt,
            segment_prompts=prompts,
            model=model,
            priority=priority.proto if priority else pb.PRIORITY_UNSPECIFIED,
            model_arguments=_model_arguments(model_arg or []),
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            max_concurrency=max_concurrency,
            deadline_seconds=deadline,
            reuse_results=reuse,
        )
        return await _started(client, g, started, watch)

    _exit(g.run(work))


@app.command()
def story(
    ctx: typer.Context,
    *,
    idea: Annotated[str, typer.Argument(help="The story idea.", show_default=False)],
    segments: Annotated[
        int, typer.Option("--segments", "-n", min=1, help="Number of script segments.")
    ] = 10,
    per_set: Annotated[
        int | None,
        typer.Option(
            min=1, max=50, help="Segments per model call (a set); default 10.", show_default=False
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save",
            help="Write one JSON file per set plus a metadata file under the server's OUTPUT_ROOT.",
        ),
    ] = False,
    output_dir: Annotated[
        str,
        typer.Option(help="Folder under the server's OUTPUT_ROOT (default: the job id)."),
    ] = "",
    model: Annotated[str, typer.Option(help="OpenAI model (default: the server's).")] = "",
    priority: PriorityOption = None,
    max_retries: MaxRetries = 0,
    deadline: Deadline = 0,
    idempotency_key: IdempotencyKey = None,
    watch: WatchFlag = True,
) -> None:
    """Start a story job: a plan (title, characters, outline), then the script in sets.

    Follows the job to its end unless `--no-watch`; the summary names the title and the files.

    Example:

    ```
    orchestrator story "A sci-fi adventure about time travel" -n 30 --per-set 10 \\
        --save --output-dir time_travel
    ```
    """
    g = _globals(ctx)

    async def work(client: JobsClient) -> ExitCode:
        started = await client.start_story(
            idea=idea,
            total_segments=segments,
            segments_per_set=per_set or 0,
            save_to_files=save,
            output_directory=output_dir,
            model=model,
            priority=priority.proto if priority else pb.PRIORITY_UNSPECIFIED,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            deadline_seconds=deadline,
        )
        return await _started(client, g, started, watch)

    _exit(g.run(work))


@app.command("watch")
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
    g = _globals(ctx)
    _exit(g.run(lambda client: follow_job(client, job_id, _sink(g), after_cursor=after,
                                          follow=follow)))  # fmt: skip


@app.command()
def get(
    ctx: typer.Context,
    job_id: JobId,
    no_tasks: Annotated[
        bool, typer.Option("--no-tasks", help="Leave out the per-task states.")
    ] = False,
) -> None:
    """Show a job: its status, counts and per-task states (attempts, errors, results)."""
    g = _globals(ctx)

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

    _exit(g.run(work))


@app.command("list")
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
    g = _globals(ctx)
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

    _exit(g.run(work))


@app.command()
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
    g = _globals(ctx)
    if regenerate and not task:
        g.error("--regenerate needs --task: name the tasks to run again", ExitCode.USAGE, "USAGE")
        _exit(ExitCode.USAGE)

    async def work(client: JobsClient) -> ExitCode:
        before = await client.get(job_id, omit_tasks=True)
        answer = await client.retry_failed(
            job_id, max_retries, task_indices=task or (), regenerate=regenerate
        )
        if watch and answer.retried_count:
            return await follow_job(client, job_id, _sink(g), after_cursor=before.last_cursor)
        if g.json:
            print(json_line(message_dict(answer)), flush=True)
        else:
            tasks = ", ".join(str(i) for i in answer.retried_tasks)
            g.out.print(f"{answer.message}" + (f" (tasks {tasks})" if tasks else ""))
        return ExitCode.OK

    _exit(g.run(work))


@app.command()
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel every unfinished task of a job (in-flight generations are cancelled too)."""
    g = _globals(ctx)

    async def work(client: JobsClient) -> ExitCode:
        job = await client.cancel(job_id)
        if g.json:
            print(json_line(message_dict(job)), flush=True)
        else:
            g.out.print(render_summary(job, ExitCode.OK), soft_wrap=True)
        return ExitCode.OK

    _exit(g.run(work))


@app.command()
def health(ctx: typer.Context) -> None:
    """Ask the gateway's health service; exit 0 when it is SERVING, 6 otherwise."""
    g = _globals(ctx)

    async def work(client: JobsClient) -> ExitCode:
        status = await client.health()
        if g.json:
            print(json_line({"status": status.value}), flush=True)
        else:
            g.out.print(f"{g.target}: {status.value}", markup=False)
        return ExitCode.OK if status == ServingStatus.SERVING else ExitCode.UNREACHABLE

    _exit(g.run(work))


token_app = typer.Typer(help="Make access tokens for the gateway (no gateway needed).")
app.add_typer(token_app, name="token")


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option(help="The owner the token names (its jobs' owner).")],
    role: Annotated[str, typer.Option(help="read, submit or admin.")] = "submit",
) -> None:
    """Print a new random token and the AUTH_TOKENS entry (its hash) the gateway needs.

    Give the token to its user; put the entry in AUTH_TOKENS (comma separated) or in the file
    named by AUTH_TOKENS_FILE. The gateway never sees or stores the token itself.
    """
    try:
        parsed = Role[role.upper()]
    except KeyError:
        print(f"--role: one of read, submit, admin (got {role!r})", file=sys.stderr)
        raise typer.Exit(ExitCode.USAGE) from None
    token = new_token()
    entry = hash_entry(name, parsed, token)
    try:
        Tokens.parse(entry)
    except ValueError as exc:
        print(f"--name: {exc} (letters, digits, '_', '.', '@', '-'; at most 64)", file=sys.stderr)
        raise typer.Exit(ExitCode.USAGE) from None
    print(f"token:       {token}")
    print(f"AUTH_TOKENS: {entry}")
