"""OpenAI rate limits and 429 storms, read by the real openai client (max_retries=0)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import ValidationError

from services.simulator.app import SimulatorHandle
from services.simulator.rate_limits import go_duration
from tests.simulator.conftest import APP, ManualClock

MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "A heist on Mars"}]
LIMIT_HEADERS = {
    f"x-ratelimit-{what}-{resource}"
    for what in ("limit", "remaining", "reset")
    for resource in ("requests", "tokens")
}


@pytest.fixture
async def client(manual_sim: SimulatorHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{manual_sim.url}/v1", api_key="sk-test", max_retries=0, timeout=5
    ) as client:
        yield client


async def _chat(client: openai.AsyncOpenAI, model: str = MODEL) -> tuple[httpx.Headers, int]:
    """Headers and total tokens of one successful call."""
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    usage = raw.parse().usage
    assert usage is not None
    return raw.headers, usage.total_tokens


async def _refused(client: openai.AsyncOpenAI, model: str = MODEL) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    return caught.value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (59.9999, "1m0s"),
    ],
)
def test_durations_are_written_as_openai_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


async def test_a_success_carries_the_six_headers(client: openai.AsyncOpenAI) -> None:
    headers, tokens = await _chat(client)

    assert set(headers) >= LIMIT_HEADERS
    assert headers["x-ratelimit-limit-requests"] == "30000"
    assert headers["x-ratelimit-remaining-requests"] == "29999"
    assert headers["x-ratelimit-reset-requests"] == "2ms"  # one request refills in 60 s / 30000
    assert headers["x-ratelimit-limit-tokens"] == "150000000"
    assert headers["x-ratelimit-remaining-tokens"] == str(150_000_000 - tokens)
    assert headers["x-ratelimit-reset-tokens"] == go_duration(tokens * 60 / 150_000_000)


async def test_requests_per_minute_budget(
    manual_sim: SimulatorHandle, client: openai.AsyncOpenAI, clock: ManualClock
) -> None:
    manual_sim.configure(openai_model_rate_limits={MODEL: {"requests_per_minute": 3}})

    seen = [await _chat(client) for _ in range(3)]
    refused = await _refused(client)
    other_model, _ = await _chat(client, "gpt-4o")  # limits are per model
    clock.advance(20)  # one request refilled
    after, _ = await _chat(client)

    assert [h["x-ratelimit-remaining-requests"] for h, _ in seen] == ["2", "1", "0"]
    assert [h["x-ratelimit-reset-requests"] for h, _ in seen] == ["20s", "40s", "1m0s"]
    assert refused.code == "rate_limit_exceeded"
    assert refused.type == "requests"
    assert "Limit 3, Used 3, Requested 1" in refused.message
    assert refused.response.headers["retry-after"] == "20"
    assert refused.response.headers["retry-after-ms"] == "20000"
    assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.response.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert other_model["x-ratelimit-limit-requests"] == "30000"
    assert after["x-ratelimit-remaining-requests"] == "0"
    stats = manual_sim.stats(with_logs=False)
    assert stats["over_budget"] == {"requests": 1}
    assert stats["rate_limited"] == {"chat": 1}
    assert stats["responses"]["chat"] == {"200": 5, "429": 1}


async def test_tokens_per_minute_budget(
    manual_sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    _, cost = await _chat(client)  # the same prompt always costs the same
    budget = cost + cost // 2
    manual_sim.configure(openai_rate_limit={"tokens_per_minute": budget})

    first, _ = await _chat(client)
    refused = await _refused(client)

    assert first["x-ratelimit-remaining-tokens"] == str(budget - cost)
    assert refused.type == "tokens"
    assert refused.code == "rate_limit_exceeded"
    wait = (cost - (budget - cost)) * 60 / budget
    assert refused.response.headers["retry-after-ms"] == str(round(wait * 1000))
    assert refused.response.headers["x-ratelimit-remaining-tokens"] == str(budget - cost)
    assert manual_sim.stats(with_logs=False)["over_budget"] == {"tokens": 1}


async def test_an_openai_storm_refuses_every_chat_for_its_duration(
    manual_sim: SimulatorHandle, client: openai.AsyncOpenAI, clock: ManualClock
) -> None:
    manual_sim.configure(storms=[{"provider": "openai", "retry_after": 5, "duration": 60}])

    refused = [await _refused(client) for _ in range(3)]
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        fal_submit = await http.post(f"/{APP}", json={"prompt": "x"})
    clock.advance(60)
    after, _ = await _chat(client)

    headers = refused[0].response.headers
    assert refused[0].code == "rate_limit_exceeded"
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("5", "5000")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "5s"
    assert set(headers) >= LIMIT_HEADERS
    assert fal_submit.status_code == 200  # another provider is not in the storm
    assert after["x-ratelimit-remaining-requests"] == "29999"  # refused calls took nothing
    stats = manual_sim.stats(with_logs=False)
    assert stats["rate_limited"] == {"chat": 3}
    assert stats["faults_injected"] == {"chat": {"storm": 3}}


async def test_a_fal_storm_on_chosen_endpoints(
    manual_sim: SimulatorHandle, client: openai.AsyncOpenAI, clock: ManualClock
) -> None:
    manual_sim.configure(
        storms=[{"endpoints": ["submit"], "retry_after": 2.5, "duration": 10, "start": 5}]
    )
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        before = await http.post(f"/{APP}", json={"prompt": "x"})
        clock.advance(5)
        during = await http.post(f"/{APP}", json={"prompt": "x"})
        status = await http.get(before.json()["status_url"])
        clock.advance(10)
        after = await http.post(f"/{APP}", json={"prompt": "x"})
    await _chat(client)

    assert (before.status_code, during.status_code, after.status_code) == (200, 429, 200)
    assert during.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert during.json() == {"detail": "Too Many Requests"}
    assert status.status_code == 202
    assert manual_sim.stats(with_logs=False)["rate_limited"] == {"submit": 1}


@pytest.mark.parametrize(
    "storm",
    [
        {"provider": "fal", "endpoints": ["submit"], "duration": 1},
        {"provider": "openai", "duration": 0},
        {"provider": "azure", "duration": 1},
        {"endpoints": [], "duration": 1},
    ],
)
async def test_bad_storms_are_refused(sim: SimulatorHandle, storm: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        sim.configure(storms=[storm])


async def test_reset_refills_the_budgets(
    manual_sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    manual_sim.configure(openai_rate_limit={"requests_per_minute": 1})
    await _chat(client)
    await _refused(client)

    manual_sim.reset()

    headers, _ = await _chat(client)
    assert headers["x-ratelimit-limit-requests"] == "30000"
