"""fal storage on the wire: the CDN token (fal's REST host) and CDN uploads, served back under /cdn.

What fal-client 1.0.x sends for `AsyncClient.upload(data, content_type, file_name)`:

1. `POST {REST}/storage/auth/token?storage_type=fal-cdn-v3`, `Authorization: Key <FAL_KEY>`,
   body `{}`; answer `{"token", "token_type", "base_url", "expires_at"}`, cached by the client
   until `expires_at`.
2. Up to 100 MiB: `POST {CDN}/files/upload` (CDN fixed at v3.fal.media) with the bytes,
   `Content-Type`, `X-Fal-File-Name` and `Authorization: <token_type> <token>`; answer
   `{"access_url"}`.
3. Bigger: `POST {base_url}/files/upload/multipart` (answer `{"access_url", "uploadId"}`), one
   `PUT {access_url}/multipart/{uploadId}/{n}` per part (answer header `ETag`), then
   `POST {access_url}/multipart/{uploadId}/complete` with `{"parts": [{"partNumber", "etag"}]}`.

(If the CDN path fails, fal-client falls back to `{REST}/storage/upload/initiate` and a signed
GCS URL; that path is not simulated, and our uploader turns the fallback off.)

Like the queue URLs, `base_url` and `access_url` point at the simulator itself. The CDN token is
stateless (an expiry and its HMAC under a per-process secret), so it outlives a reset as a real
token outlives nothing on fal's side. Fault rules for uploads match the file name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import re
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from services.simulator.cdn_store import PendingUpload, StoredFile, TooLarge
from services.simulator.config import SLOW_RESPONSE, Endpoint
from services.simulator.endpoint import (
    CALL,
    STATE,
    answer_fault,
    authorized,
    endpoint,
    public_base,
)
from services.simulator.errors import fal_error
from services.simulator.faults import Fault
from services.simulator.state import SimulatorState

TOKEN_TYPE = "Bearer"
FILE_NAME_HEADER = "X-Fal-File-Name"
MAX_PARTS = 10_000  # as S3-style multipart uploads allow
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 64 * 1024


def issue_token(secret: bytes, expires_at: int) -> str:
    mac = hmac.new(secret, str(expires_at).encode(), hashlib.sha256).hexdigest()
    return f"{expires_at}.{mac}"


def token_valid(secret: bytes, token: str, now: float) -> bool:
    expires, _, _ = token.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(token, issue_token(secret, int(expires)))


def _error(status: int, fault: Fault) -> web.StreamResponse:
    return fal_error(status, retry_after=fault.retry_after)


def _cdn_authorized(request: web.Request, state: SimulatorState) -> bool:
    """A CDN token from /storage/auth/token, or the fal key itself."""
    if authorized(request, state.config.fal_key, "Key"):
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme == TOKEN_TYPE and token_valid(state.cdn_secret, token, time.time())


async def _admit(
    request: web.Request, name: Endpoint, match_text: str
) -> web.StreamResponse | None:
    """Auth and fault for one storage call: the answer instead of it, or None to go on."""
    state = request.app[STATE]
    ok = (
        authorized(request, state.config.fal_key, "Key")
        if name == "upload_token"
        else _cdn_authorized(request, state)
    )
    if not ok:
        return fal_error(401, "No user found for Key ID and Secret or invalid token")
    fault = state.decide_fault(name, match_text)
    if fault:
        return await answer_fault(request, fault, _error)
    return None


async def _hold_if_slow(request: web.Request) -> None:
    """`slow_response`: the work is done (the file is stored) but the answer comes late."""
    fault = request[CALL].fault
    if fault and fault.kind == SLOW_RESPONSE:
        state = request.app[STATE]
        await state.pause(state.config.hang_seconds)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (read no further)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> web.Response:
    return fal_error(413, "File is larger than the simulator's CDN store")


def _file_name(request: web.Request) -> str:
    """The client's file name reduced to safe characters; `upload.<ext>` if none."""
    raw = request.headers.get(FILE_NAME_HEADER, "").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", raw).strip("._")[:120]
    if name:
        return name
    return "upload" + (mimetypes.guess_extension(request.content_type) or ".bin")


def _access_url(request: web.Request, file_id: str, file_name: str) -> str:
    return f"{public_base(request)}/cdn/{file_id}/{quote(file_name)}"


@endpoint("upload_token")
async def storage_token(request: web.Request) -> web.StreamResponse:
    if answer := await _admit(request, "upload_token", ""):
        return answer
    state = request.app[STATE]
    expires_at = int(time.time() + state.config.upload_token_ttl)
    response = web.json_response(
        {
            "token": issue_token(state.cdn_secret, expires_at),
            "token_type": TOKEN_TYPE,
            "base_url": public_base(request),
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
        }
    )
    await _hold_if_slow(request)
    return response


@endpoint("upload")
async def upload(request: web.Request) -> web.StreamResponse:
    name = _file_name(request)
    if answer := await _admit(request, "upload", name):
        return answer
    state = request.app[STATE]
    data = await _read_capped(request, state.cdn.limit)
    if data is None:
        return _too_large()
    file_id = uuid.uuid4().hex
    try:
        state.cdn.put(StoredFile(file_id, name, request.content_type, data))
    except TooLarge:
        return _too_large()
    request[CALL].request_id = file_id
    await _hold_if_slow(request)
    return web.json_response({"access_url": _access_url(request, file_id, name)})


@endpoint("upload")
async def multipart_create(request: web.Request) -> web.StreamResponse:
    name = _file_name(request)
    if answer := await _admit(request, "upload", name):
        return answer
    file_id, upload_id = uuid.uuid4().hex, uuid.uuid4().hex
    request.app[STATE].cdn.start(upload_id, PendingUpload(file_id, name, request.content_type))
    request[CALL].request_id = file_id
    return web.json_response(
        {"access_url": _access_url(request, file_id, name), "uploadId": upload_id}
    )


def _pending(request: web.Request) -> PendingUpload | web.Response:
    state = request.app[STATE]
    info = request.match_info
    pending = state.cdn.pending(info["upload_id"], info["file_id"])
    if pending is None or pending.file_name != info["name"]:
        return fal_error(404, "Upload not found")
    request[CALL].request_id = pending.file_id
    return pending


@endpoint("upload")
async def multipart_part(request: web.Request) -> web.StreamResponse:
    if answer := await _admit(request, "upload", request.match_info["name"]):
        return answer
    pending = _pending(request)
    if isinstance(pending, web.Response):
        return pending
    number = request.match_info["part"]
    if not number.isdigit() or not 1 <= int(number) <= MAX_PARTS:
        return fal_error(400, f"part number must be 1-{MAX_PARTS}")
    state = request.app[STATE]
    data = await _read_capped(request, state.cdn.limit)
    if data is None:
        return _too_large()
    try:
        tag = state.cdn.add_part(request.match_info["upload_id"], int(number), data)
    except TooLarge:
        return _too_large()
    await _hold_if_slow(request)
    return web.Response(status=200, headers={"ETag": tag})


def _part_order(body: object) -> list[tuple[int, str]]:
    """(partNumber, etag) pairs of a complete call, in part order."""
    parts = body.get("parts") if isinstance(body, dict) else None
    if not isinstance(parts, list) or not parts:
        raise ValueError("parts: a non-empty list is required")
    try:
        return sorted((int(part["partNumber"]), str(part["etag"])) for part in parts)
    except (TypeError, KeyError, ValueError):
        raise ValueError("parts: each needs a partNumber and an etag") from None


@endpoint("upload")
async def multipart_complete(request: web.Request) -> web.StreamResponse:
    if answer := await _admit(request, "upload", request.match_info["name"]):
        return answer
    pending = _pending(request)
    if isinstance(pending, web.Response):
        return pending
    try:
        order = _part_order(json.loads(await request.text()))
        file = request.app[STATE].cdn.complete(request.match_info["upload_id"], order)
    except ValueError as exc:  # JSON errors included
        return fal_error(400, str(exc))
    await _hold_if_slow(request)
    return web.json_response({"access_url": _access_url(request, file.file_id, file.file_name)})


async def cdn_file(request: web.Request) -> web.StreamResponse:
    """An uploaded file, as fal's CDN serves it: public, with its content type."""
    file = request.app[STATE].cdn.get(request.match_info["file_id"])
    if file is None or file.file_name != request.match_info["name"]:
        return web.json_response({"detail": "File not found"}, status=404)
    return web.Response(body=file.data, headers={"Content-Type": file.content_type})


def add_storage_routes(app: web.Application) -> None:
    """Register before the fal queue routes: those are catch-alls."""
    app.router.add_post("/storage/auth/token", storage_token)
    app.router.add_post("/files/upload", upload)
    app.router.add_post("/files/upload/multipart", multipart_create)
    part = "/cdn/{file_id}/{name}/multipart/{upload_id}"
    app.router.add_put(part + "/{part}", multipart_part)
    app.router.add_post(part + "/complete", multipart_complete)
    app.router.add_get("/cdn/{file_id}/{name}", cdn_file)
