"""The `orchestrator` command line (typer): its global options and its commands.

The commands live by what they do: `start` (video, story), `jobs` (watch, get, list, retry,
cancel, health) and `tokens` (token new); what they share is in `context`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator_client import DEFAULT_HTTP_URL, DEFAULT_TARGET
from services.cli import jobs, start, tokens
from services.cli.exits import EXIT_CODES_HELP
from services.cli.options import Globals

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


# In the order `--help` lists them.
app.command()(start.video)
app.command()(start.story)
app.command("watch")(jobs.watch_command)
app.command()(jobs.get)
app.command("list")(jobs.list_command)
app.command()(jobs.retry)
app.command()(jobs.cancel)
app.command()(jobs.health)
app.add_typer(tokens.token_app, name="token")
