"""Story pages read as a script; everything a user typed is shown as text; phones fit."""

from __future__ import annotations

import re

from orchestrator.v1 import jobs_pb2 as pb
from playwright.async_api import Browser, Page, expect

from services.simulator.app import SimulatorHandle
from tests.browser.helpers import expect_clean_log
from tests.browser.test_video_pages import start_video_from_form
from tests.support.client import watch_to_end
from tests.support.inproc import InProcStack

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


async def start_story_from_form(page: Page, base: str, *, idea: str) -> str:
    await page.goto(f"{base}/new/story")
    await page.get_by_label("Idea").fill(idea)
    await page.get_by_label("Segments", exact=True).fill("6")
    await page.get_by_label("Segments per set").fill("3")
    async with page.expect_navigation(url=re.compile(r"/jobs/[0-9a-f-]+\?done=started")):
        await page.get_by_role("button", name="Start story job").click()
    return page.url.split("/jobs/")[1].split("?")[0]


async def test_story_page_shows_the_sets_as_a_script(page: Page, web: InProcStack) -> None:
    job_id = await start_story_from_form(page, web.http_url, idea="A heist on the moon")
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    await expect(page.locator("#set-1 .badge .word")).to_have_text("succeeded")
    await expect(page.locator("#set-2 .badge .word")).to_have_text("succeeded")
    job = await web.stub.GetJob(pb.GetJobRequest(job_id=job_id))
    story = job.story
    await expect(page.locator("#job-title")).to_contain_text(story.story_title)
    await expect(page.locator(".logline")).to_contain_text(story.logline)
    roster = page.locator("table.roster tbody tr")
    await expect(roster).to_have_count(len(story.characters))
    for person in story.characters:
        await expect(page.locator("table.roster")).to_contain_text(person.name)
    scenes = page.locator("#story .scene")
    await expect(scenes).to_have_count(6)
    numbers = await page.locator("#story .scene .num").all_inner_texts()
    assert numbers == [f"{n}." for n in range(1, 7)]
    first = scenes.first
    assert await first.locator(".heading").inner_text()
    assert await first.locator(".action").inner_text()
    await expect(first.locator(".dialogue .character").first).to_be_visible()
    speaker = await first.locator(".dialogue .character").first.inner_text()
    assert speaker == speaker.upper() and speaker.title() in {
        c.name.title() for c in story.characters
    }
    await expect(page.locator("#set-2 .sub")).to_have_text("segments 4-6")
    await expect(page.locator("#task-0 h3")).to_have_text("Story plan")
    replay = await watch_to_end(web.stub, job_id)
    await expect(page.locator("#events tr")).to_have_count(len(replay))
    await expect_clean_log(page)


async def test_markup_in_a_prompt_and_an_idea_is_shown_as_text(
    page: Page, web: InProcStack, sim: SimulatorHandle
) -> None:
    await start_video_from_form(page, web.http_url, segments=1, prompt=HOSTILE)
    prompt = page.locator("#task-1 .prompt")
    await expect(prompt).to_have_text(f"{HOSTILE} (segment 1 of 1)")
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("#task-1 .prompt script, #task-1 .prompt img").count() == 0

    await start_story_from_form(page, web.http_url, idea=HOSTILE)
    await expect(page.locator("dl.meta")).to_contain_text(HOSTILE)
    await expect(page.locator("#job-status .word")).to_have_text("completed")
    assert await page.evaluate("window.__pwned") is None
    await page.goto(web.http_url + "/")
    await expect(page.locator("#job-rows tr")).to_have_count(2)
    assert await page.evaluate("window.__pwned") is None

    # A form the server refuses (a private address) shows the values back, still as text.
    await page.goto(f"{web.http_url}/new/video")
    await page.get_by_label("Image URL").fill("https://10.1.2.3/arena.png")
    await page.get_by_label("Segments", exact=True).fill("2")
    await page.get_by_label("Prompt", exact=False).first.fill(HOSTILE)
    await page.get_by_role("button", name="Start video job").click()
    await expect(page.locator("#form-error")).to_contain_text("battle_arena_url")
    await expect(page.locator("#battle_arena_url")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#prompt")).to_have_value(HOSTILE)
    assert await page.evaluate("window.__pwned") is None


async def test_pages_fit_a_phone(browser: Browser, web: InProcStack) -> None:
    context = await browser.new_context(
        viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    try:
        job_id, _ = await start_video_from_form(page, web.http_url, segments=3, prompt="Robots")
        await expect(page.locator("#job-status .word")).to_have_text("completed")
        for path in ("/", f"/jobs/{job_id}", "/new/video", "/new/story"):
            await page.goto(web.http_url + path)
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
        await page.goto(web.http_url + "/")
        # Table rows become labelled cards: the status cell says what it is.
        cell = page.locator(f"#job-{job_id} td[data-label=Status]")
        await expect(cell).to_be_visible()
        assert await cell.evaluate("td => getComputedStyle(td, '::before').content") == '"Status"'
    finally:
        await context.close()
