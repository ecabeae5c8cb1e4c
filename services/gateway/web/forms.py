"""Reading the pages' forms: URL-encoded or multipart bodies, with limits and a timeout.

A form is a flat `Form` of text fields plus at most one file. Sizes are bounded as the JSON API
bounds its bodies (`TEXT_LIMIT` for all text together, `MAX_UPLOAD_BYTES` for the file), and the
whole body must arrive within the guard's read timeout. Anything malformed is InvalidArgument.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from common.errors import InvalidArgument
from services.gateway.http_guard import HttpGuard
from services.video_worker.fal_upload import MAX_UPLOAD_BYTES

TEXT_LIMIT = 1 << 20
MAX_FIELDS = 32
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Upload:
    data: bytes
    content_type: str
    file_name: str


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    upload: Upload | None = None

    def text(self, name: str) -> str:
        return self.fields.get(name, "")

    def number(self, name: str, default: int = 0) -> int:
        """An integer field (empty: `default`)."""
        raw = self.text(name).strip()
        if not raw:
            return default
        if not raw.lstrip("-").isdigit() or len(raw) > 9:
            raise InvalidArgument(name, f"must be a whole number, got {raw[:20]!r}")
        return int(raw)

    def flag(self, name: str) -> bool:
        return self.text(name) in ("on", "true", "1", "yes")


async def read_form(request: web.Request, guard: HttpGuard) -> Form:
    content_type = request.content_type
    if content_type == "application/x-www-form-urlencoded":
        body = await guard.read_body(request, limit=TEXT_LIMIT)
        return _urlencoded(body)
    if content_type == "multipart/form-data":
        try:
            async with asyncio.timeout(guard.read_timeout):
                return await _multipart(request)
        except TimeoutError:
            raise InvalidArgument("body", f"not received within {guard.read_timeout:g}s") from None
        except (ValueError, AssertionError, RequestPayloadError, HttpProcessingError):
            raise InvalidArgument("body", "not a readable multipart form") from None
    raise InvalidArgument("Content-Type", "a form (URL-encoded or multipart) is expected")


def _urlencoded(body: bytes) -> Form:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("body", "not a UTF-8 URL-encoded form") from None
    if len(pairs) > MAX_FIELDS:
        raise InvalidArgument("body", f"at most {MAX_FIELDS} fields")
    form = Form()
    for name, value in pairs:
        form.fields.setdefault(name, value)
    return form


async def _multipart(request: web.Request) -> Form:
    form = Form()
    text_bytes = 0
    reader = await request.multipart()
    for count in range(MAX_FIELDS + 1):
        part = await reader.next()
        if part is None:
            return form
        if count == MAX_FIELDS or not isinstance(part, BodyPartReader):
            raise InvalidArgument("body", f"at most {MAX_FIELDS} flat fields")
        name = part.name or ""
        if part.filename is not None:
            data = await _read_part(part, MAX_UPLOAD_BYTES, name)
            if data and form.upload is None:
                file_type = part.headers.get("Content-Type", "").split(";")[0].strip().lower()
                form.upload = Upload(data, file_type, part.filename)
            continue
        data = await _read_part(part, TEXT_LIMIT - text_bytes, name)
        text_bytes += len(data)
        try:
            form.fields.setdefault(name, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidArgument(name, "must be UTF-8 text") from None
    raise AssertionError("unreachable")


async def _read_part(part: BodyPartReader, limit: int, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > limit:
            raise InvalidArgument(name or "body", f"at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
