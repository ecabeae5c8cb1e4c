"""What the browser tests read off the pages, and the screenshots they keep."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import Page, expect

DOCS = Path(__file__).resolve().parents[2] / "docs"
MAX_SCREENSHOT_BYTES = 150 * 1024


async def event_cursors(page: Page) -> list[int]:
    """The cursors of the event log's rows, top to bottom."""
    values: list[str] = await page.locator("#events tr").evaluate_all(
        "rows => rows.map(row => row.dataset.cursor)"
    )
    return [int(v) for v in values]


async def expect_clean_log(page: Page) -> list[int]:
    """The event log has no duplicate and no gap (as counted by the page's script), and its
    rows are exactly cursors 1..N; the cursors."""
    log = page.locator("#events")
    await expect(log).to_have_attribute("data-duplicates", "0")
    await expect(log).to_have_attribute("data-gaps", "0")
    cursors = await event_cursors(page)
    assert cursors == list(range(1, len(cursors) + 1)), cursors
    return cursors


async def task_word(page: Page, index: int) -> str:
    return await page.locator(f"#task-{index} .status .word").inner_text()


async def screenshot(page: Page, tmp_path: Path, name: str, *, height: int = 0) -> Path:
    """A screenshot of the top of the page (`height` pixels, default the viewport's) into
    tmp_path, and into docs/ when UPDATE_SCREENSHOTS=1 (so `make test` never rewrites
    committed files)."""
    path = tmp_path / name
    width = page.viewport_size["width"] if page.viewport_size else 1100
    clip = {"x": 0, "y": 0, "width": width, "height": height} if height else None
    await page.screenshot(path=str(path), full_page=bool(height), clip=clip, animations="disabled")
    size = path.stat().st_size
    assert size <= MAX_SCREENSHOT_BYTES, f"{name} is {size} bytes"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        (DOCS / name).write_bytes(path.read_bytes())
    return path
