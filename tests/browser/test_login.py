"""With tokens configured: pages send you to the login page, the cookie is HttpOnly and
SameSite=Strict, signing out clears it, and a read-only token gets a readable refusal."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb
from playwright.async_api import Page, expect

from common.auth import Role, hash_entry
from services.simulator.app import SimulatorHandle
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

SUBMIT_TOKEN = "web-submit-token-0123456789abcdef"
READ_TOKEN = "web-read-token-0123456789abcdef"
ADMIN_TOKEN = "web-admin-token-0123456789abcdef"
ARENA = "https://example.com/arena.png"


@pytest.fixture
async def secured(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    tokens = ",".join(
        (
            hash_entry("alice", Role.SUBMIT, SUBMIT_TOKEN),
            hash_entry("alice", Role.READ, READ_TOKEN),
            hash_entry("ops", Role.ADMIN, ADMIN_TOKEN),
        )
    )
    async with inproc_stack(stack_settings(tmp_path, sim, auth_tokens=tokens)) as stack:
        yield stack


async def sign_in(page: Page, token: str) -> None:
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def test_login_flow_cookie_and_sign_out(page: Page, secured: InProcStack) -> None:
    base = secured.http_url
    started = await secured.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=2),
        metadata=(("authorization", f"Bearer {SUBMIT_TOKEN}"),),
    )
    job_path = f"/jobs/{started.job_id}"

    # No cookie: the job's page sends us to the login page, which sends us back after.
    await page.goto(base + job_path)
    await expect(page).to_have_url(re.compile(r"/login\?next=/jobs/"))
    await sign_in(page, "not-a-token-at-all")
    await expect(page.locator("#login-error")).to_contain_text("unknown or revoked token")
    await expect(page.get_by_label("Access token")).to_have_attribute("aria-invalid", "true")
    await sign_in(page, SUBMIT_TOKEN)
    await expect(page).to_have_url(base + job_path)
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await expect(page.locator(".who")).to_contain_text("alice")

    cookies = {c["name"]: c for c in await page.context.cookies()}
    login = cookies["orchestrator_token"]
    assert login["value"] == SUBMIT_TOKEN
    assert login["httpOnly"] is True and login["sameSite"] == "Strict"
    assert login["secure"] is False  # plain HTTP here; Secure over HTTPS (tests/web)
    assert cookies["orchestrator_csrf"]["httpOnly"] is True
    assert "orchestrator_token" not in await page.evaluate("document.cookie")

    # The JSON API never takes the cookie.
    api = await page.request.post(
        base + "/api/generate-video", data={"action": "status", "sessionId": started.job_id}
    )
    assert api.status == 401

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    assert "orchestrator_token" not in {c["name"] for c in await page.context.cookies()}
    await page.goto(base + "/")
    await expect(page).to_have_url(re.compile(r"/login\?next=/$"))


async def test_read_only_token_sees_a_readable_refusal(page: Page, secured: InProcStack) -> None:
    base = secured.http_url
    await page.goto(base + "/new/video")
    await sign_in(page, READ_TOKEN)
    await expect(page).to_have_url(base + "/new/video")
    await expect(page.locator(".notice")).to_contain_text("may only read")
    await page.get_by_label("Image URL").fill(ARENA)
    await page.get_by_role("button", name="Start video job").click()
    await expect(page.locator("#form-error")).to_contain_text(
        "starting a job needs the submit role"
    )
    jobs, _ = await secured.gateway.core.list()
    assert jobs == []

    # An admin's job is not this reader's: it does not exist for them.
    started = await secured.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1),
        metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
    )
    response = await page.goto(f"{base}/jobs/{started.job_id}")
    assert response is not None and response.status == 404
    await expect(page.locator(".error")).to_contain_text("no job")
    events = await page.request.get(f"{base}/jobs/{started.job_id}/events")
    assert events.status == 404


async def test_read_only_token_cannot_cancel_and_is_told_why(
    page: Page, secured: InProcStack, sim: SimulatorHandle
) -> None:
    sim.configure(latency=30)
    started = await secured.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=2),
        metadata=(("authorization", f"Bearer {SUBMIT_TOKEN}"),),
    )
    await page.goto(f"{secured.http_url}/jobs/{started.job_id}")
    await sign_in(page, READ_TOKEN)
    await expect(page.locator("#actions .hint")).to_contain_text("may only read")
    await page.get_by_role("button", name="Cancel job").click()
    await expect(page.locator("#action-error")).to_contain_text("CancelJob needs the submit role")
    job = await secured.stub.GetJob(
        pb.GetJobRequest(job_id=started.job_id),
        metadata=(("authorization", f"Bearer {READ_TOKEN}"),),
    )
    assert job.status != pb.JOB_STATUS_CANCELLED
