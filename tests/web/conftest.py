"""The dashboard's HTTP side without a browser: forms, cookies, CSRF, SSE, limits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from common.auth import Role, hash_entry

SUBMIT_TOKEN = "web-submit-token-0123456789abcdef"
READ_TOKEN = "web-read-token-0123456789abcdef"
BOB_TOKEN = "web-bob-token-0123456789abcdef"
ARENA = "https://example.com/arena.png"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def token_setting() -> str:
    return ",".join(
        (
            hash_entry("alice", Role.SUBMIT, SUBMIT_TOKEN),
            hash_entry("alice", Role.READ, READ_TOKEN),
            hash_entry("bob", Role.SUBMIT, BOB_TOKEN),
        )
    )


async def csrf_of(http: httpx.AsyncClient, path: str = "/new/video") -> str:
    """Load a page with a form (which sets the CSRF cookie); the form's token."""
    page = await http.get(path)
    assert page.status_code == 200, page.text
    match = _CSRF.search(page.text)
    assert match is not None
    return match.group(1)


@dataclass
class SseEvent:
    id: str | None = None
    event: str = "message"
    data: str = ""
    comments: list[str] = field(default_factory=list)


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream (the fields this server sends); comments are kept."""
    current = SseEvent()
    async for line in response.aiter_lines():
        if line == "":
            if current.data or current.event != "message" or current.comments:
                yield current
            current = SseEvent()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = value


def origin(base: str) -> dict[str, Any]:
    return {"Origin": base}
