"""OpenAI through the real `openai.AsyncOpenAI`, with the client's own retries off.

The client retries twice by default (honouring retry-after up to 120 s); with our resilience
layer in charge that would multiply attempts silently, so `max_retries=0` and every failure is
translated into the shared error tree here. Answers are read raw (`with_raw_response`) so the
`x-ratelimit-*` headers reach the shared per-model budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self

import openai

from common.attempts.kind import RateLimits
from common.resilience import (
    ErrorClass,
    PermanentError,
    connection_error,
    error_from_status,
    scrub,
    timeout_error,
)
from services.story_worker.script import PROVIDER, InvalidOutput


@dataclass(frozen=True)
class Answer:
    """A chat completion's JSON object, and what its headers said of the rate limits."""

    data: dict[str, Any]
    limits: RateLimits | None = None


class StoryProvider(Protocol):
    """Raises common.resilience ProviderError subclasses on failure."""

    async def complete_json(
        self, model: str, system: str, user: str, schema_name: str, schema: dict[str, Any]
    ) -> Answer: ...


def rate_limits(headers: Mapping[str, str]) -> RateLimits | None:
    """OpenAI's `x-ratelimit-limit-requests`, `-limit-tokens` and `-remaining-requests`."""

    def number(name: str) -> int | None:
        value = headers.get(f"x-ratelimit-{name}", "")
        return int(value) if value.isdigit() else None

    limits = RateLimits(
        requests=number("limit-requests"),
        tokens=number("limit-tokens"),
        remaining_requests=number("remaining-requests"),
    )
    return None if limits == RateLimits() else limits


class OpenAIStoryProvider:
    def __init__(self, *, api_key: str, base_url: str, timeout: float, secrets: list[str]) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )
        self._secrets = secrets

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def complete_json(
        self, model: str, system: str, user: str, schema_name: str, schema: dict[str, Any]
    ) -> Answer:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "schema": schema, "strict": True},
                },
            )
        except openai.APITimeoutError:  # a subclass of APIConnectionError: first
            raise timeout_error(PROVIDER, "chat completion timed out") from None
        except openai.APIConnectionError as exc:
            raise connection_error(
                PROVIDER, f"chat completion failed: {exc}", secrets=self._secrets
            ) from None
        except openai.APIStatusError as exc:
            raise error_from_status(
                PROVIDER,
                exc.status_code,
                scrub(f"chat completion -> {exc.status_code}: {exc.message}", self._secrets),
                exc.response.headers,
                code=exc.code,
            ) from None
        try:
            response = raw.parse()
        except (openai.APIError, ValueError):
            raise InvalidOutput("the answer is not a chat completion") from None
        if not response.choices:
            raise InvalidOutput("the answer has no choices")
        choice = response.choices[0]
        if choice.message.refusal:
            raise PermanentError(
                f"the model refused: {choice.message.refusal[:200]}",
                provider=PROVIDER,
                error_class=ErrorClass.INVALID_OUTPUT,
            )
        if choice.finish_reason == "length":
            raise InvalidOutput("the answer was truncated (finish_reason=length)")
        try:
            data = json.loads(choice.message.content or "")
        except ValueError:
            raise InvalidOutput("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise InvalidOutput("the answer is not a JSON object")
        return Answer(data, rate_limits(raw.headers))
