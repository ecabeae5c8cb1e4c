"""Put an input image on fal's CDN through the real `fal_client.AsyncClient.upload`.

fal-client makes two calls (see services/simulator/fal_storage.py for the wire): a CDN token
from fal's REST host, then the upload to fal's CDN host. It makes both on throwaway httpx clients
of its own, so this module hands it ours instead: the token manager and the CDN client below
use the same `FalTransport` as the queue calls, which routes fal's hosts to FAL_QUEUE_URL and
turns every failure into our error tree before fal-client's hidden retries can see it. The
fallback to fal's older GCS upload path is turned off: a failed CDN upload is reported once, as
itself, and retried (or not) by common.resilience like any other call.

Only images go up, and only small ones: see `CONTENT_TYPES` and `MAX_UPLOAD_BYTES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Self

import fal_client
import httpx
from fal_client.auth import AuthCredentials
from fal_client.client import AsyncCDNTokenManager, CDNToken

from common.resilience import ErrorClass, PermanentError, TransientError
from services.video_worker.fal_transport import PROVIDER, FalTransport

# What image-to-video models accept as `image_url`; anything else would fail there, later.
CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
# An input frame, not a video: fal-client switches to multipart uploads only past 100 MiB,
# so every upload is one request.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_FILE_NAME = 200


class InvalidUpload(PermanentError):
    """The upload was refused before any call: wrong type, empty, too big, or a bad name."""

    def __init__(self, message: str) -> None:
        super().__init__(message, provider=PROVIDER, error_class=ErrorClass.BAD_REQUEST)


def _malformed(what: str, exc: Exception) -> TransientError:
    return TransientError(
        f"malformed {what} answer ({type(exc).__name__}: {exc})",
        provider=PROVIDER,
        error_class=ErrorClass.SERVER_ERROR,
    )


class _RoutedTokenManager(AsyncCDNTokenManager):
    """fal-client's CDN token cache, fetching over our HTTP client (fal-client 1.0.x parsing)."""

    def __init__(self, auth: AuthCredentials, http: httpx.AsyncClient) -> None:
        super().__init__(auth)
        self._http = http

    async def _refresh_token(self) -> CDNToken:
        response = await self._http.post(self._url, headers=self._headers, json={})
        try:
            data = response.json()
            return CDNToken(
                token=data["token"],
                token_type=data["token_type"],
                base_upload_url=data["base_url"],
                expires_at=datetime.fromisoformat(data["expires_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed("CDN token", exc) from None


class _UploadingAsyncClient(fal_client.AsyncClient):
    """`fal_client.AsyncClient` whose token and CDN calls use our HTTP client."""

    def __init__(self, key: str, timeout: float, http: httpx.AsyncClient) -> None:
        super().__init__(key=key, default_timeout=timeout)
        self._http = http
        self._tokens = _RoutedTokenManager(AuthCredentials("Key", key), http)

    @property
    async def _client(self) -> httpx.AsyncClient:
        return self._http

    @property
    async def _token_manager(self) -> AsyncCDNTokenManager:
        return self._tokens

    @contextlib.asynccontextmanager
    async def _cdn_client(self) -> AsyncIterator[httpx.AsyncClient]:
        # Shared, not closed per upload: the uploader closes it. fal-client sets the CDN
        # token's Authorization on every CDN call, replacing our default `Key` header.
        yield self._http


def check_upload(data: bytes, content_type: str, file_name: str) -> None:
    """Raise `InvalidUpload` unless the upload is one this service sends."""
    if content_type not in CONTENT_TYPES:
        raise InvalidUpload(
            f"content type {content_type!r} is not one of {', '.join(sorted(CONTENT_TYPES))}"
        )
    if not data:
        raise InvalidUpload("the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidUpload(f"the file has {len(data)} bytes; at most {MAX_UPLOAD_BYTES}")
    if (
        not file_name
        or len(file_name) > MAX_FILE_NAME
        or "/" in file_name
        or "\\" in file_name
        or not file_name.isprintable()
    ):
        raise InvalidUpload(
            f"file name must be 1-{MAX_FILE_NAME} printable characters without a path"
        )


class FalUploader:
    """Uploads images to fal's CDN; an async context manager that owns its connections."""

    def __init__(
        self, *, key: str | None, queue_url: str, timeout: float, secrets: list[str]
    ) -> None:
        headers = {"User-Agent": f"generation-orchestrator fal-client/{fal_client.__version__}"}
        if key:
            headers["Authorization"] = f"Key {key}"
        self._http = httpx.AsyncClient(
            transport=FalTransport(queue_url, secrets), headers=headers, timeout=timeout
        )
        self._fal = _UploadingAsyncClient(key or "", timeout, self._http)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        """The public URL of `data` on fal's CDN, to pass as a model's `image_url`.

        Raises `InvalidUpload` before any call for a file this service should not send,
        `TransientError` / `PermanentError` (AUTH for a wrong key) when the call fails.
        """
        check_upload(data, content_type, file_name)
        try:
            url = await self._fal.upload(
                data, content_type, file_name, repository="fal_v3", fallback_repository=[]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed("CDN upload", exc) from None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _malformed("CDN upload", ValueError(f"access_url {url!r}"))
        return url
