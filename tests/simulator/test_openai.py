"""The real openai.AsyncOpenAI (max_retries=0) against /v1/chat/completions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any, Literal, cast

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, Field

from services.simulator.app import SimulatorHandle

MODEL = "gpt-4o-mini"
IDEA = "Write a story about a time travel paradox"


class Mood(StrEnum):
    TENSE = "tense"
    HOPEFUL = "hopeful"
    EERIE = "eerie"


class Line(BaseModel):
    character: str
    line: str


class Scene(BaseModel):
    scene_number: int = Field(ge=1, le=99)
    scene_heading: str
    time_of_day: Literal["DAY", "NIGHT", "DAWN", "DUSK"]
    mood: Mood
    action: str
    duration_seconds: float = Field(ge=2, le=10)
    lines: list[Line] = Field(min_length=2, max_length=4)
    camera_note: str | None


class Character(BaseModel):
    name: str
    description: str


class Script(BaseModel):
    title: str
    logline: str
    characters: list[Character] = Field(min_length=2)
    scenes: list[Scene] = Field(min_length=4, max_length=4)


def _messages(idea: str = IDEA) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": "You are a screenwriter. Answer with JSON only."},
        {"role": "user", "content": idea},
    ]


def _schema_format() -> ResponseFormatJSONSchema:
    return {
        "type": "json_schema",
        "json_schema": {"name": "script", "schema": Script.model_json_schema(), "strict": True},
    }


@pytest.fixture
async def client(sim: SimulatorHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="sk-test", max_retries=0, timeout=5
    ) as client:
        yield client


async def test_structured_output_validates_and_reads_like_a_script(
    client: openai.AsyncOpenAI,
) -> None:
    schema = Script.model_json_schema()
    assert "$defs" in schema  # the nested models are references

    completion = await client.chat.completions.create(
        model=MODEL, messages=_messages(), response_format=_schema_format()
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    script = Script.model_validate_json(choice.message.content or "")
    assert script.title == "The Time Travel Paradox"
    assert len(script.characters) == 2
    assert [s.scene_number for s in script.scenes] == [1, 2, 3, 4]
    assert all(len(s.lines) == 2 for s in script.scenes)
    assert script.scenes[0].scene_heading.startswith(("INT. ", "EXT. "))
    assert " " in script.characters[0].name
    assert script.logline.endswith(".")


async def test_same_prompt_same_output_other_prompt_other_output(
    client: openai.AsyncOpenAI,
) -> None:
    async def content(idea: str) -> str:
        completion = await client.chat.completions.create(
            model=MODEL, messages=_messages(idea), response_format=_schema_format()
        )
        return completion.choices[0].message.content or ""

    first, again, other = await content(IDEA), await content(IDEA), await content("A heist on Mars")

    assert first == again
    assert first != other


async def test_parse_helper_with_strict_schema(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=_messages(), response_format=Script
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Script)
    assert parsed.scenes[0].camera_note is not None  # nullable: the non-null branch is filled


async def test_json_object_and_plain_text(client: openai.AsyncOpenAI) -> None:
    as_object = await client.chat.completions.create(
        model=MODEL, messages=_messages(), response_format={"type": "json_object"}
    )
    as_text = await client.chat.completions.create(model=MODEL, messages=_messages())

    assert set(json.loads(as_object.choices[0].message.content or "")) == {"text"}
    assert as_text.choices[0].message.content


async def test_rate_limit_with_retry_after(
    sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    sim.configure(faults=[{"endpoints": ["chat"], "rates": {"429": 1.0}, "retry_after": 0.25}])

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_messages())

    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["retry-after-ms"] == "250"
    assert error.request_id and error.request_id.startswith("req_")


async def test_insufficient_quota(sim: SimulatorHandle, client: openai.AsyncOpenAI) -> None:
    sim.configure(rules=[{"endpoint": "chat", "fault": "429", "code": "insufficient_quota"}])

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_messages())

    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


async def test_bad_request_and_server_error(
    sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "match": "boom", "fault": "500"}])

    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model=MODEL, messages=cast(Any, [{"role": "wizard", "content": "hi"}])
        )
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(model=MODEL, messages=_messages("boom"))

    assert bad.value.type == "invalid_request_error"
    assert bad.value.param == "messages[0].role"
    assert broken.value.type == "server_error"


async def test_unsatisfiable_schema_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"$ref": "#/$defs/missing"}},
    }

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=_messages(), response_format=response_format
        )

    assert caught.value.param == "response_format"


async def test_client_timeout_shorter_than_hang(sim: SimulatorHandle) -> None:
    sim.configure(hang_seconds=0.5, rules=[{"endpoint": "chat", "fault": "timeout"}])

    async with openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="sk-test", max_retries=0, timeout=0.1
    ) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=_messages())

    assert sim.stats()["chat_calls"] == 1


async def test_reset_is_a_connection_error(
    sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "fault": "reset"}])

    with pytest.raises(openai.APIConnectionError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_messages())

    assert not isinstance(caught.value, openai.APITimeoutError)


async def test_truncate_and_invalid_json(sim: SimulatorHandle, client: openai.AsyncOpenAI) -> None:
    sim.configure(
        rules=[
            {"endpoint": "chat", "match": "cut", "fault": "truncate"},
            {"endpoint": "chat", "match": "chatty", "fault": "invalid_json"},
        ]
    )

    cut = await client.chat.completions.create(
        model=MODEL, messages=_messages("cut"), response_format=_schema_format()
    )
    chatty = await client.chat.completions.create(
        model=MODEL, messages=_messages("chatty"), response_format=_schema_format()
    )
    with pytest.raises(openai.LengthFinishReasonError):
        await client.chat.completions.parse(
            model=MODEL, messages=_messages("cut"), response_format=Script
        )

    assert cut.choices[0].finish_reason == "length"
    assert chatty.choices[0].finish_reason == "stop"
    for completion in (cut, chatty):
        with pytest.raises(ValueError):
            json.loads(completion.choices[0].message.content or "")


async def test_api_key_is_checked_when_configured(
    sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    sim.configure(openai_key="sk-right")

    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_messages())
    async with openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="sk-right", max_retries=0
    ) as right:
        ok = await right.chat.completions.create(model=MODEL, messages=_messages())

    assert caught.value.code == "invalid_api_key"
    assert "sk-test" not in caught.value.message
    assert ok.choices[0].message.content


async def test_chat_log_keeps_prompt_excerpts(
    sim: SimulatorHandle, client: openai.AsyncOpenAI
) -> None:
    sim.configure(rules=[{"endpoint": "chat", "fault": "503", "times": 1}])
    long_idea = "x" * 800

    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=_messages(long_idea))
    await client.chat.completions.create(model=MODEL, messages=_messages())

    log = sim.stats()["chat_log"]
    assert [(e["status"], e["fault"]) for e in log] == [(503, "503"), (200, None)]
    assert log[0]["user"] == "x" * 500
    assert log[1]["user"] == IDEA
    assert log[1]["system"].startswith("You are a screenwriter")
    assert sim.stats()["chat_calls"] == 2


async def test_unknown_openai_path_is_an_openai_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="text-embedding-3-small", input="hi")
