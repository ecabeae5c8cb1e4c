"""A gateway with tokens configured: two owners who may submit, a reader, and an admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.auth import Role, hash_entry
from services.simulator.app import SimulatorHandle
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

TOKENS = {
    "alice": ("alice", Role.SUBMIT, "alice-token-0123456789abcdef"),
    "bob": ("bob", Role.SUBMIT, "bob-token-0123456789abcdef"),
    "reader": ("alice", Role.READ, "alice-read-token-0123456789"),
    "admin": ("ops", Role.ADMIN, "ops-admin-token-0123456789"),
}


def bearer(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who][2]}"),)


def auth_header(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who][2]}"}


def token_setting() -> str:
    return ",".join(hash_entry(name, role, token) for name, role, token in TOKENS.values())


@pytest.fixture
async def secured(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    settings = stack_settings(
        tmp_path,
        sim,
        auth_tokens=token_setting(),
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
    )
    async with inproc_stack(settings) as stack:
        yield stack
