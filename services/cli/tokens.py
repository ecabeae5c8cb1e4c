"""`orchestrator token new`: make an access token and its AUTH_TOKENS entry (no gateway needed)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from common.auth import Role, Tokens, hash_entry, new_token
from services.cli.exits import ExitCode

token_app = typer.Typer(help="Make access tokens for the gateway (no gateway needed).")


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
