"""The story worker's model contract: the real openai client against the simulator, and the
validation of what the model answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from common.resilience import ErrorClass, PermanentError, TransientError
from services.simulator.app import SimulatorHandle
from services.story_worker import script
from services.story_worker.openai_adapter import OpenAIStoryProvider
from tests.support.stack import OPENAI_KEY

ROSTER = ["Ada", "Bo"]


@pytest.fixture
async def openai_provider(sim: SimulatorHandle) -> AsyncIterator[OpenAIStoryProvider]:
    async with OpenAIStoryProvider(
        api_key=OPENAI_KEY, base_url=f"{sim.url}/v1", timeout=1.0, secrets=[OPENAI_KEY]
    ) as provider:
        yield provider


async def ask(provider: OpenAIStoryProvider, user: str = "SET 1 OF 1") -> dict[str, object]:
    answer = await provider.complete_json(
        "gpt-4o-mini", script.SYSTEM, user, "story_set", script.set_schema(ROSTER, 3)
    )
    return answer.data


async def test_schema_output_validates_and_keeps_to_the_roster(
    openai_provider: OpenAIStoryProvider,
) -> None:
    plan_answer = await openai_provider.complete_json(
        "gpt-4o-mini",
        script.SYSTEM,
        script.plan_prompt("A heist", 5),
        "story_plan",
        script.plan_schema(5),
    )
    plan = script.check_plan(plan_answer.data, 5)
    assert plan["title"] and len(plan["outline"]) == 5 and len(plan["characters"]) >= 2
    segments = script.check_set(await ask(openai_provider), ROSTER, 11, 13)
    assert [s["segment_number"] for s in segments] == [11, 12, 13]
    assert all(set(s["characters"]) <= set(ROSTER) for s in segments)


@pytest.mark.parametrize("fault", ["truncate", "invalid_json"])
async def test_truncated_or_broken_output_is_a_transient_invalid_output(
    openai_provider: OpenAIStoryProvider, sim: SimulatorHandle, fault: str
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "match": "SET 1", "fault": fault}])
    with pytest.raises(TransientError) as caught:
        await ask(openai_provider)
    assert caught.value.error_class is ErrorClass.INVALID_OUTPUT


@pytest.mark.parametrize(
    ("rule", "kind", "error_class"),
    [
        ({"fault": "429"}, TransientError, ErrorClass.RATE_LIMITED),
        ({"fault": "429", "code": "insufficient_quota"}, PermanentError, ErrorClass.QUOTA),
        ({"fault": "500"}, TransientError, ErrorClass.SERVER_ERROR),
        ({"fault": "400"}, PermanentError, ErrorClass.BAD_REQUEST),
        ({"fault": "timeout"}, TransientError, ErrorClass.TIMEOUT),
    ],
)
async def test_provider_errors_are_classified_once_without_client_retries(
    openai_provider: OpenAIStoryProvider,
    sim: SimulatorHandle,
    rule: dict[str, str],
    kind: type[Exception],
    error_class: ErrorClass,
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "match": "SET 1", **rule}], hang_seconds=3)
    with pytest.raises(kind) as caught:
        await ask(openai_provider)
    assert getattr(caught.value, "error_class", None) is error_class
    assert sim.stats(with_logs=False)["chat_calls"] == 1  # openai's own retries are off
    assert OPENAI_KEY not in str(caught.value)


def test_set_validation_rejects_wrong_counts_and_unknown_characters() -> None:
    segment = {"characters": ["Ada"], "dialogue": [{"character": "Bo", "line": "hi"}]}
    assert len(script.check_set({"segments": [segment] * 2}, ROSTER, 1, 2)) == 2
    with pytest.raises(script.InvalidOutput, match="expected 3 segments"):
        script.check_set({"segments": [segment] * 2}, ROSTER, 1, 3)
    stranger = {"characters": ["Zed"], "dialogue": []}
    with pytest.raises(script.InvalidOutput, match="not in the roster"):
        script.check_set({"segments": [stranger]}, ROSTER, 1, 1)


def test_plan_validation_dedupes_names_and_needs_a_title_and_outline() -> None:
    plan = {
        "title": " T ",
        "logline": "",
        "genre": "",
        "characters": [{"name": "Ada"}, {"name": "Ada"}, {"name": "Bo"}],
        "outline": ["a", "b"],
    }
    assert [c["name"] for c in script.check_plan(plan, 2)["characters"]] == ["Ada", "Bo"]
    with pytest.raises(script.InvalidOutput, match="outline"):
        script.check_plan(plan, 3)
    with pytest.raises(script.InvalidOutput, match="title"):
        script.check_plan({**plan, "title": ""}, 2)
    with pytest.raises(script.InvalidOutput, match="distinct characters"):
        script.check_plan({**plan, "characters": [{"name": "Ada"}]}, 2)


def test_output_that_ignores_the_schema_is_invalid_output_not_a_crash() -> None:
    with pytest.raises(script.InvalidOutput):
        script.check_set({"segments": [{"characters": ["Ada"], "dialogue": ["hi"]}]}, ROSTER, 1, 1)
    with pytest.raises(script.InvalidOutput):
        script.check_set({"segments": [{"characters": [["Ada"]]}]}, ROSTER, 1, 1)
    with pytest.raises(script.InvalidOutput):
        script.check_plan({"title": "T", "characters": ["Ann", "Bob"], "outline": ["a"]}, 1)


async def test_the_answer_carries_the_rate_limit_headers(
    openai_provider: OpenAIStoryProvider, sim: SimulatorHandle
) -> None:
    sim.configure(openai_rate_limit={"requests_per_minute": 40, "tokens_per_minute": 90_000})
    first = await openai_provider.complete_json(
        "gpt-4o-mini", script.SYSTEM, "SET 1 OF 1", "story_set", script.set_schema(ROSTER, 1)
    )
    second = await openai_provider.complete_json(
        "gpt-4o-mini", script.SYSTEM, "SET 1 OF 1", "story_set", script.set_schema(ROSTER, 1)
    )
    assert first.limits is not None and second.limits is not None
    assert (first.limits.requests, first.limits.tokens) == (40, 90_000)
    assert first.limits.used_requests == 1
    assert second.limits.used_requests == 2
