"""OpenAI `POST /v1/chat/completions`: deterministic structured output and OpenAI-shaped errors.

The completion is a pure function of the model and the messages (its RNG is seeded from a
sha256 of them), so a retried call returns the same script and tests can compare outputs.
Every success and every 429 carries OpenAI's `x-ratelimit-*` headers; a call over its model's
budget (see rate_limits.py) is a 429 `rate_limit_exceeded` with `retry-after`/`retry-after-ms`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.simulator.config import INVALID_JSON, SLOW_RESPONSE, TRUNCATE
from services.simulator.endpoint import CALL, STATE, answer_fault, authorized, endpoint
from services.simulator.errors import openai_error
from services.simulator.faults import Fault
from services.simulator.prose import Prose
from services.simulator.rate_limits import RateLimiter, Refusal, go_duration
from services.simulator.schema_fill import SchemaError, SchemaFiller
from services.simulator.stats import ChatExcerpt, message_text

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})


class InvalidRequest(ValueError):
    """A request OpenAI would reject with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str


def validate(body: object) -> dict[str, Any]:
    """The request body if OpenAI would accept it; InvalidRequest otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("We could not parse the JSON body of your request.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{position}].role'.", f"messages[{position}].role"
            )
    if body.get("stream"):
        raise InvalidRequest("stream is not supported by the simulator", "stream")
    response_format = body.get("response_format")
    if response_format is not None:
        if (
            not isinstance(response_format, dict)
            or response_format.get("type") not in RESPONSE_FORMATS
        ):
            raise InvalidRequest("Invalid response_format type.", "response_format.type")
        if response_format["type"] == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise InvalidRequest(
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    "response_format.json_schema.name",
                    "missing_required_parameter",
                )
            if not isinstance(spec.get("schema"), dict):
                raise InvalidRequest(
                    "Invalid schema for response_format: schema must be an object.",
                    "response_format.json_schema.schema",
                )
    return body


def complete(body: dict[str, Any], fault: Fault | None) -> Completion:
    """The assistant's answer: JSON matching the requested schema, with any output fault applied."""
    messages = body["messages"]
    material = body["model"] + "\n" + json.dumps(messages, sort_keys=True, separators=(",", ":"))
    rng = random.Random(int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big"))
    users = [message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    prose = Prose(rng, users[-1] if users else "")
    response_format = body.get("response_format") or {"type": "text"}
    match response_format["type"]:
        case "json_schema":
            schema = response_format["json_schema"]["schema"]
            try:
                value = SchemaFiller(schema, rng, prose).fill()
            # A malformed schema (wrong keyword types) is the caller's error, as OpenAI's 400.
            except (SchemaError, TypeError, AttributeError, KeyError) as exc:
                name = response_format["json_schema"]["name"]
                raise InvalidRequest(
                    f"Invalid schema for response_format '{name}': {exc}", "response_format"
                ) from exc
            content = json.dumps(value, ensure_ascii=False)
        case "json_object":
            content = json.dumps({"text": prose.paragraph()}, ensure_ascii=False)
        case _:
            content = prose.paragraph()
    if fault is not None and fault.kind == TRUNCATE:
        # The token budget ran out: the JSON stops mid-value.
        return Completion(content[: max(1, len(content) // 2)], "length")
    if fault is not None and fault.kind == INVALID_JSON:
        return Completion(f"Sure! Here is the script you asked for:\n{content}", "stop")
    return Completion(content, "stop")


def token_counts(body: dict[str, Any], completion: Completion) -> tuple[int, int]:
    """Rough (prompt, completion) token counts: four characters a token."""
    prompt_tokens = sum(len(message_text(m.get("content"))) // 4 + 4 for m in body["messages"])
    return prompt_tokens, max(1, len(completion.content) // 4)


def completion_body(
    body: dict[str, Any], completion: Completion, completion_id: str
) -> dict[str, Any]:
    """The chat.completion object around an answer, with rough token counts."""
    prompt_tokens, completion_tokens = token_counts(body, completion)
    return {
        "id": f"chatcmpl-{completion_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": completion.content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }


def over_budget(refusal: Refusal, model: str, limits: RateLimiter, request_id: str) -> web.Response:
    """OpenAI's 429 for a call over its model's requests or tokens per minute."""
    short = "RPM" if refusal.resource == "requests" else "TPM"
    message = (
        f"Rate limit reached for {model} in organization org-simulator on "
        f"{refusal.resource} per min ({short}): Limit {refusal.limit}, Used {refusal.used}, "
        f"Requested {refusal.requested}. Please try again in {go_duration(refusal.wait)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    return openai_error(
        429,
        message=message,
        error_type=refusal.resource,
        code="rate_limit_exceeded",
        retry_after=refusal.wait,
        request_id=request_id,
        headers=limits.headers(model),
    )


@endpoint("chat")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = f"req_{state.new_id().hex}"
    request[CALL].request_id = request_id
    if not authorized(request, state.config.openai_key, "Bearer"):
        return openai_error(401, request_id=request_id)
    body_text = await request.text()
    try:
        body: object = json.loads(body_text)
    except ValueError:
        body = None
    request[CALL].chat = ChatExcerpt.of(body)
    named = body.get("model") if isinstance(body, dict) else None
    model = named if isinstance(named, str) else ""
    limits = state.rate_limits

    def render(status: int, fault: Fault) -> web.StreamResponse:
        # An injected 429 with a Retry-After (a storm, say) has no request left until then.
        headers = limits.headers(model, throttled_for=fault.retry_after) if status == 429 else {}
        return openai_error(
            status,
            code=fault.code,
            retry_after=fault.retry_after,
            request_id=request_id,
            headers=headers,
        )

    fault = state.decide_fault("chat", body_text)
    if fault and (answer := await answer_fault(request, fault, render)):
        return answer
    started = time.monotonic()
    try:
        valid = validate(body)
        completion = complete(valid, fault)
    except InvalidRequest as exc:
        return openai_error(
            400, message=str(exc), param=exc.param, code=exc.code, request_id=request_id
        )
    refusal = limits.admit(model, sum(token_counts(valid, completion)))
    if refusal is not None:
        state.stats.over_budget[refusal.resource] += 1
        return over_budget(refusal, model, limits, request_id)
    await state.pause(state.config.chat_latency)
    if fault and fault.kind == SLOW_RESPONSE:
        await state.pause(state.config.hang_seconds)
    headers = {
        **limits.headers(model),
        "x-request-id": request_id,
        "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
    }
    return web.json_response(
        completion_body(valid, completion, state.new_id().hex), headers=headers
    )


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any other /v1 path: OpenAI's 404 shape rather than a fal one."""
    return openai_error(
        404,
        message=f"Invalid URL ({request.method} {request.path})",
        request_id=f"req_{request.app[STATE].new_id().hex}",
    )


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
