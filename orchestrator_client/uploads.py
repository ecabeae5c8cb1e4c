"""Upload a local image through the gateway's HTTP side port, for use as a battle arena.

POST {http_url}/api/uploads?file_name=<name>
Content-Type: image/png | image/jpeg | image/webp      (the raw file bytes as the body)
Authorization: Bearer <token>                          (when a token is given)
-> 200 {"url": "https://..."}  |  4xx {"error": "..."}
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx

from orchestrator_client.errors import UploadError, scrub

DEFAULT_HTTP_URL = "http://127.0.0.1:8080"
UPLOAD_PATH = "/api/uploads"
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}


def content_type(path: Path) -> str:
    """The image's media type, from its suffix; a ValueError for anything else."""
    try:
        return CONTENT_TYPES[path.suffix.lower()]
    except KeyError:
        allowed = ", ".join(sorted(CONTENT_TYPES))
        raise ValueError(f"{path.name}: not an image this route takes ({allowed})") from None


async def upload_image(
    path: str | Path,
    *,
    http_url: str = DEFAULT_HTTP_URL,
    token: str | None = None,
    ca_file: str | Path | None = None,
    http_timeout: float = 60.0,
) -> str:
    """Send the file to the gateway; the URL it is now served at.

    Raises ValueError for a file that is missing or not a PNG/JPEG/WebP, and `UploadError` when
    the gateway refuses (4xx, `refused`) or fails (5xx or unreachable). `ca_file` is the CA
    to trust for an https `http_url` signed by a private CA.
    """
    file = Path(path)
    media_type = content_type(file)
    try:
        body = await asyncio.to_thread(file.read_bytes)
    except OSError as exc:
        raise ValueError(f"cannot read {file}: {exc.strerror}") from None
    headers = {"Content-Type": media_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = http_url.rstrip("/") + UPLOAD_PATH
    try:
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    except OSError as exc:
        raise ValueError(f"cannot read {ca_file}: {exc.strerror}") from None
    try:
        async with httpx.AsyncClient(timeout=http_timeout, verify=verify) as http:
            response = await http.post(
                url, params={"file_name": file.name}, content=body, headers=headers
            )
    except httpx.HTTPError as exc:
        raise UploadError(f"upload to {url} failed: {scrub(str(exc), token)}") from None
    return _url_of(response, token)


def _url_of(response: httpx.Response, token: str | None) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code == 200 and isinstance(data, dict) and isinstance(data.get("url"), str):
        return str(data["url"])
    if isinstance(data, dict) and data.get("error"):
        reason = str(data["error"])
    elif response.status_code == 200:
        reason = "the answer has no url"
    else:
        reason = response.reason_phrase or "no reason given"
    raise UploadError(
        f"upload refused: HTTP {response.status_code}: {scrub(reason, token)}",
        http_status=response.status_code,
    )
