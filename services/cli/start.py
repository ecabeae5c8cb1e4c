"""The commands that start a job: `video` and `story`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from orchestrator.v1 import jobs_pb2 as pb

from orchestrator_client import JobsClient
from orchestrator_client.client import StartedJob
from orchestrator_client.uploads import upload_image
from services.cli.context import (
    Deadline,
    IdempotencyKey,
    MaxConcurrency,
    MaxRetries,
    PriorityOption,
    WatchFlag,
    exit_with,
    globals_of,
    sink,
)
from services.cli.display import json_line
from services.cli.exits import ExitCode
from services.cli.follow import follow_job
from services.cli.options import Globals, UsageError


async def _started(client: JobsClient, g: Globals, started: StartedJob, watch: bool) -> ExitCode:
    if watch:
        return await follow_job(client, started.job_id, sink(g))
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
    g = globals_of(ctx)
    prompts = segment_prompt or []
    try:
        arena_file = _arena_file(arena)
    except UsageError as exc:
        g.error(str(exc), ExitCode.USAGE, "USAGE")
        exit_with(ExitCode.USAGE)

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

    exit_with(g.run(work))


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
    g = globals_of(ctx)

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

    exit_with(g.run(work))
