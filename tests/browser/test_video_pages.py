"""Video jobs in a real browser: started from the form, watched live, a failed segment, retry."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.v1 import jobs_pb2 as pb
from playwright.async_api import Page, expect

from services.simulator.app import SimulatorHandle
from tests.browser.helpers import expect_clean_log, screenshot
from tests.support.client import watch_to_end
from tests.support.inproc import InProcStack

ARENA = "https://example.com/arena.png"


async def start_video_from_form(
    page: Page, base: str, *, segments: int, prompt: str = ""
) -> tuple[str, str]:
    """Fill and send the video form; the job id and the job page's HTML as first served."""
    await page.goto(f"{base}/new/video")
    await page.get_by_label("Image URL").fill(ARENA)
    await page.get_by_label("Segments", exact=True).fill(str(segments))
    if prompt:
        await page.get_by_label("Prompt", exact=False).first.fill(prompt)
    async with page.expect_navigation(url=re.compile(r"/jobs/[0-9a-f-]+\?done=started")) as nav:
        await page.get_by_role("button", name="Start video job").click()
    response = await nav.value
    assert response is not None and response.status == 200
    job_id = page.url.split("/jobs/")[1].split("?")[0]
    return job_id, await response.text()


async def test_started_from_the_form_every_segment_turns_succeeded_live(
    page: Page, web: InProcStack, sim: SimulatorHandle, tmp_path: Path
) -> None:
    sim.configure(latency=1.5)  # the page is served long before the first segment finishes
    job_id, first_html = await start_video_from_form(page, web.http_url, segments=4)
    assert 'class="badge s-completed"' not in first_html
    await page.evaluate("window.__sameDocument = true")

    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    for index in range(1, 5):
        await expect(page.locator(f"#task-{index} .status .word")).to_have_text("succeeded")
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    await expect(page.locator("#players video")).to_have_count(4)
    await expect(page.locator(".progress")).to_contain_text("4 of 4 segments finished")
    assert await page.evaluate("window.__sameDocument") is True  # live, never reloaded

    # Every event, once, in order: the same as a gRPC watcher sees.
    replay = await watch_to_end(web.stub, job_id)
    await expect(page.locator("#events tr")).to_have_count(len(replay))
    cursors = await expect_clean_log(page)
    assert cursors == [e.cursor for e in replay]
    last = page.locator("#events tr").last
    await expect(last).to_contain_text("4 of 4 segments succeeded")
    await expect(last.locator(".word")).to_have_text("completed")
    for video in await page.locator("#players video").all():
        assert (await video.get_attribute("src") or "").startswith(sim.url)

    # The list shows it, with its status in words.
    await page.goto(web.http_url + "/")
    row = page.locator(f"#job-{job_id}")
    await expect(row.locator(".badge .word")).to_have_text("completed")
    await expect(row).to_contain_text("4/4")
    await screenshot(page, tmp_path, "dashboard-jobs.png")
    await page.get_by_label("Kind").select_option("story")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#no-jobs")).to_contain_text("No jobs match these filters")


async def test_job_list_updates_live(page: Page, web: InProcStack, sim: SimulatorHandle) -> None:
    sim.configure(latency=1.0)
    await page.goto(web.http_url + "/")
    await expect(page.locator("#no-jobs")).to_be_visible()
    started = await web.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=2)
    )
    row = page.locator(f"#job-{started.job_id}")
    await expect(row).to_be_visible()  # appeared without a reload
    await expect(page.locator("#no-jobs")).to_have_count(0)
    await expect(row.locator(".badge .word")).to_have_text("completed")


async def test_permanently_failing_segment_then_retry_from_the_page(
    page: Page, web: InProcStack, sim: SimulatorHandle, tmp_path: Path
) -> None:
    sim.configure(rules=[{"endpoint": "submit", "match": "segment 2 of", "fault": "400"}])
    job_id, _ = await start_video_from_form(page, web.http_url, segments=4)

    await expect(page.locator("#job-status .word")).to_have_text("partially failed")
    failed = page.locator("#task-2")
    await expect(failed.locator(".status .word")).to_have_text("failed")
    await expect(failed.locator(".recoverable")).to_have_text("no")
    await expect(failed.locator(".error-class")).to_have_text("bad_request")
    await expect(failed.locator(".last-error")).to_contain_text("400")
    await expect(failed.locator(".attempts")).to_contain_text("1 of")
    warning = page.locator("#attention [role=alert]")
    await expect(warning).to_contain_text("1 segment did not succeed")
    await expect(warning).to_contain_text("Segment 2")
    await expect(warning).to_contain_text("not recoverable")
    for index in (1, 3, 4):
        await expect(page.locator(f"#task-{index} .status .word")).to_have_text("succeeded")
    await expect(page.locator("#players video")).to_have_count(3)
    await expect_clean_log(page)
    await screenshot(page, tmp_path, "dashboard-job.png", height=1080)

    # The provider accepts it now; RetryFailed from the page finishes the job.
    sim.configure(rules=[])
    async with page.expect_navigation(url=re.compile(r"\?done=retried")):
        await page.get_by_role("button", name="Retry failed").click()
    await expect(page.locator(".notice")).to_contain_text("queued again")
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    await expect(page.locator("#task-2 .status .word")).to_have_text("succeeded")
    await expect(page.locator("#attention [role=alert]")).to_have_count(0)
    await expect(page.locator("#players video")).to_have_count(4)
    await expect(page.locator("#retry-button")).to_have_count(0)
    replay = await watch_to_end(web.stub, job_id)
    await expect(page.locator("#events tr")).to_have_count(len(replay))
    await expect_clean_log(page)

    # Re-roll one succeeded segment: a new video for it, the others untouched.
    old = await page.locator("#video-3 video").get_attribute("src")
    other = await page.locator("#video-1 video").get_attribute("src")
    assert old and other
    async with page.expect_navigation(url=re.compile(r"\?done=retried")):
        await page.locator("#regenerate-3").click()
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    await expect(page.locator("#video-3 video")).not_to_have_attribute("src", old)
    await expect(page.locator("#video-1 video")).to_have_attribute("src", other)
    assert sim.stats(with_logs=False)["accepted_requests"] == 5  # 3 + the retry + the re-roll


async def test_cancel_from_the_page(page: Page, web: InProcStack, sim: SimulatorHandle) -> None:
    sim.configure(latency=30)
    await start_video_from_form(page, web.http_url, segments=3)
    await expect(page.locator("#task-1 .status .word")).to_have_text("running")
    async with page.expect_navigation(url=re.compile(r"\?done=cancelled")):
        await page.get_by_role("button", name="Cancel job").click()
    await expect(page.locator("#job-status .word")).to_have_text("cancelled")
    for index in range(1, 4):
        await expect(page.locator(f"#task-{index} .status .word")).to_have_text("cancelled")
    await expect(page.locator("#cancel-button")).to_have_count(0)
    await expect(page.locator("#retry-button")).to_be_visible()
