"""What every HTTP request passes through: the same rules as the gRPC guard (grpc_guard.py).

* Every route but the open ones (health, the web page's login and assets, and provider
  webhooks, which prove themselves with a signature) needs `Authorization: Bearer <token>` when
  tokens are configured: 401 without a valid one. The web pages may carry the token in the
  HttpOnly cookie `COOKIE` instead; the JSON API never accepts the cookie (so no other site can
  make a browser call it), and the pages' forms carry a CSRF token. The caller is
  `request[CALLER]`; role checks happen where the action is known.
* A caller's request rate is charged (429 with Retry-After beyond it).
* Bodies are read with a size limit and a timeout; undecodable bodies are 400.
* Domain errors become their status with a JSON body; anything unexpected is a 500 with an
  error id (in the log too), never a traceback or an exception's text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from common.auth import ANONYMOUS, Caller, Tokens
from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrchestratorError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.gateway.grpc_guard import report_unexpected
from services.gateway.limits import CallerLimits

log = logging.getLogger(__name__)

HTTP_STATUS: list[tuple[type[OrchestratorError], int]] = [
    (InvalidArgument, 400),
    (NotFound, 404),
    (FailedPrecondition, 409),
    (AlreadyExists, 409),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (ResourceExhausted, 429),
]
MAX_JSON_DEPTH = 32
CALLER = web.RequestKey("caller", Caller)
COOKIE = "orchestrator_token"
# Routes of the JSON API (and metrics): bearer header only, never the web page's cookie.
API_PREFIXES = (
    "/api/",
    "/generate-movie-auto",
    "/retry-failed-story-sets",
    "/story-jobs/",
    "/metrics",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_status(exc: OrchestratorError) -> int:
    return next(code for kind, code in HTTP_STATUS if isinstance(exc, kind))


def error_body(exc: OrchestratorError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, InvalidArgument):
        body["field"] = exc.field
    return body


def error_response(exc: OrchestratorError, body: dict[str, Any] | None = None) -> web.Response:
    response = web.json_response(body or error_body(exc), status=http_status(exc))
    if isinstance(exc, Unauthenticated):
        response.headers["WWW-Authenticate"] = 'Bearer realm="orchestrator"'
    if isinstance(exc, ResourceExhausted) and exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def caller_of(request: web.Request) -> Caller:
    caller: Caller = request.get(CALLER, ANONYMOUS)
    return caller


class HttpGuard:
    def __init__(
        self,
        tokens: Tokens,
        limits: CallerLimits,
        *,
        open_paths: tuple[str, ...],
        read_timeout: float,
    ) -> None:
        self.tokens = tokens
        self.limits = limits
        self.open_paths = open_paths
        self.read_timeout = read_timeout

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not request.path.startswith(self.open_paths):
                caller = self.tokens.identify(_credentials(request))
                request[CALLER] = caller
                key = caller.name if not caller.anonymous else f"peer:{request.remote}"
                self.limits.take(key)
            return await handler(request)
        except OrchestratorError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error_id = report_unexpected(exc, f"{request.method} {request.path}")
            return web.json_response({"error": f"internal error (id {error_id})"}, status=500)

    async def read_body(self, request: web.Request, *, limit: int) -> bytes:
        """The request's body, at most `limit` bytes, within the read timeout."""
        if request.content_length is not None and request.content_length > limit:
            raise InvalidArgument("body", f"at most {limit} bytes")
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()
        except TimeoutError:
            raise InvalidArgument("body", f"not received within {self.read_timeout:g}s") from None
        except web.HTTPRequestEntityTooLarge:
            raise
        except (ValueError, OSError, RequestPayloadError, HttpProcessingError):
            # A Content-Encoding that lies, a chunked body cut short, a broken stream.
            raise InvalidArgument(
                "body", "could not be read (check its Content-Encoding and length)"
            ) from None
        if len(body) > limit:
            raise InvalidArgument("body", f"at most {limit} bytes")
        return body


def _credentials(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None or request.path.startswith(API_PREFIXES):
        return header
    cookie = request.cookies.get(COOKIE)
    return f"Bearer {cookie}" if cookie else None


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object (strict: no NaN/Infinity, bounded nesting) or InvalidArgument."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise InvalidArgument("body", "must be UTF-8 encoded JSON") from None
    except (ValueError, RecursionError):
        raise InvalidArgument("body", "must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidArgument("body", "must be a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidArgument("body", f"nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level
