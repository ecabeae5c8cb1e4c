"""Error responses shaped like each provider's, headers included.

fal: JSON `{"detail": ...}` plus `x-fal-request-id` when the error comes from "the app"; an
ingress (nginx) error is HTML without that header, which is what makes fal-client retry it.
OpenAI: `{"error": {"message", "type", "code", "param"}}` with `x-request-id`.
`Retry-After` is whole seconds (rounded up) as HTTP defines it; OpenAI also gets the exact
`retry-after-ms`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

RETRY_AFTER_STATUSES = frozenset({429, 503})

_INGRESS_PAGE = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _retry_headers(status: int, retry_after: float | None, *, with_ms: bool) -> dict[str, str]:
    if retry_after is None or status not in RETRY_AFTER_STATUSES:
        return {}
    headers = {"Retry-After": str(math.ceil(retry_after))}
    if with_ms:
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    return headers


def fal_error(
    status: int,
    detail: str | list[dict[str, Any]] | None = None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    """An error answered by the fal app/queue (not retried by fal-client unless 408/409/429)."""
    headers = {
        "x-fal-request-id": request_id or str(uuid.uuid4()),
        **_retry_headers(status, retry_after, with_ms=False),
    }
    return web.json_response(
        {"detail": reason(status) if detail is None else detail}, status=status, headers=headers
    )


def fal_ingress_error(status: int, *, retry_after: float | None = None) -> web.Response:
    """An nginx error page in front of fal: fal-client retries 502/503/504 of this shape."""
    return web.Response(
        status=status,
        text=_INGRESS_PAGE.format(code=status, reason=reason(status)),
        content_type="text/html",
        headers=_retry_headers(status, retry_after, with_ms=False),
    )


def fal_validation_error(
    message: str, error_type: str, *, request_id: str | None = None
) -> web.Response:
    """fal's 422: a pydantic-style list of problems with the input or the generation."""
    detail = [{"loc": ["body"], "msg": message, "type": error_type}]
    return fal_error(422, detail, request_id=request_id)


_OPENAI_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message)
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

_OPENAI_BY_CODE: dict[str, tuple[str, str]] = {
    # code: (type, message)
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
}


def openai_error(
    status: int,
    *,
    message: str | None = None,
    code: str | None = None,
    param: str | None = None,
    error_type: str | None = None,
    retry_after: float | None = None,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI API error; `code` (e.g. insufficient_quota) also picks its type and message.

    `error_type` overrides the type (a rate limit's is "requests" or "tokens"); `headers` are
    added (the `x-ratelimit-*` ones)."""
    default_type, default_code, default_message = _OPENAI_DEFAULTS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, reason(status)),
    )
    chosen_type = default_type
    if code is not None and code in _OPENAI_BY_CODE:
        chosen_type, default_message = _OPENAI_BY_CODE[code]
    body = {
        "error": {
            "message": message or default_message,
            "type": error_type or chosen_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    all_headers = {
        **(headers or {}),
        "x-request-id": request_id,
        **_retry_headers(status, retry_after, with_ms=True),
    }
    return web.json_response(body, status=status, headers=all_headers)
