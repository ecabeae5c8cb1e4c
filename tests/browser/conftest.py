"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against the real
gateway. Without the browser these tests skip on a developer machine and fail when CI=true.

Playwright's own browser download is never used: `executable_path` points at the system's
Chromium, launched with the flags below (no sandbox: CI runs as root; no network chatter).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from services.simulator.app import SimulatorHandle
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's auto-waiting bound for every `expect` and action in these tests.
WAIT_MS = 30_000


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{message} (CI=true: browser tests must not skip)")
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) and page; a script error fails the test."""
    expect.set_options(timeout=WAIT_MS)
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(WAIT_MS)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
async def web(tmp_path: Path, sim: SimulatorHandle) -> AsyncIterator[InProcStack]:
    """Gateway and workers in this process (in-memory broker), default limits."""
    async with inproc_stack(stack_settings(tmp_path, sim)) as stack:
        yield stack
