"""fal.ai through the real `fal_client.AsyncClient`, with one retry layer: ours.

Two seams, both in this module:

* **Host.** fal-client fixes its queue host at import (`https://queue.fal.run`). The client's
  httpx transport here rewrites that host to `FAL_QUEUE_URL`, so the real client talks to any
  fal-queue-compatible server (the local simulator in tests and `make run`). Status, result and
  cancel go to the URLs fal returned at submit, which we persist and reuse as they are.
* **Hidden retries.** fal-client retries every queue call up to 10 times (408/409/429, some
  502-504, transport errors) with its own backoff that ignores Retry-After, and may re-POST a
  submit after a read timeout — a second paid request. The transport raises our own
  `ProviderError`s (not httpx errors) for every HTTP error and transport failure, and fal-client's
  retry loop only catches httpx/fal errors, so its retries never fire. Retries, Retry-After and
  the circuit breaker are then decided once, by common.resilience.
"""

from __future__ import annotations

import json
from typing import Any, Self

import fal_client
import httpx
from fal_client.client import QUEUE_URL_FORMAT

from common.resilience import (
    ErrorClass,
    PermanentError,
    ProviderError,
    TransientError,
    connection_error,
    error_from_status,
    scrub,
    timeout_error,
)
from services.video_worker.ports import Phase, Progress, ProviderRequest, Video

PROVIDER = "fal"
_FAL_QUEUE = httpx.URL(QUEUE_URL_FORMAT)


class _FalTransport(httpx.AsyncBaseTransport):
    """Routes fal's queue host to the configured base URL and raises our errors, not httpx's."""

    def __init__(self, queue_url: str, secrets: list[str]) -> None:
        self._base = httpx.URL(queue_url.rstrip("/") + "/")
        # httpcore scans every pooled connection on each request (a select() per idle one),
        # so the pool is kept about as large as the calls a worker has in flight.
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        self._secrets = secrets

    def _route(self, url: httpx.URL) -> httpx.URL:
        if url.host != _FAL_QUEUE.host or self._base.host == _FAL_QUEUE.host:
            return url
        path = self._base.path.rstrip("/") + url.path
        return url.copy_with(
            scheme=self._base.scheme, host=self._base.host, port=self._base.port, path=path
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        routed = self._route(request.url)
        if routed is not request.url:
            request.url = routed
            request.headers["Host"] = routed.netloc.decode("ascii")
        what = f"{request.method} {request.url.path}"
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            raise timeout_error(PROVIDER, f"{what} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            message = scrub(f"{what} failed: {type(exc).__name__}: {exc}", self._secrets)
            raise connection_error(PROVIDER, message) from None
        if response.status_code >= 400:
            try:
                body = (await response.aread()).decode(errors="replace")
            except httpx.HTTPError:
                body = ""
            finally:
                await response.aclose()
            message = scrub(f"{what} -> {response.status_code}: {_detail(body)}", self._secrets)
            raise error_from_status(PROVIDER, response.status_code, message, response.headers)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _detail(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300]
    if isinstance(data, dict):
        return json.dumps(data.get("detail", data.get("status", data)))[:300]
    return json.dumps(data)[:300]


def _log_lines(logs: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(str(entry.get("message", "")) for entry in logs or [])


class _RoutedAsyncClient(fal_client.AsyncClient):
    """`fal_client.AsyncClient` whose HTTP client uses `_FalTransport`."""

    def __init__(self, key: str | None, timeout: float, http: httpx.AsyncClient) -> None:
        super().__init__(key=key, default_timeout=timeout)
        self._http = http

    @property
    async def _client(self) -> httpx.AsyncClient:
        return self._http


class FalVideoProvider:
    """`VideoProvider` for fal.ai's queue API."""

    def __init__(
        self, *, key: str | None, queue_url: str, timeout: float, secrets: list[str]
    ) -> None:
        headers = {"User-Agent": f"generation-orchestrator fal-client/{fal_client.__version__}"}
        if key:
            headers["Authorization"] = f"Key {key}"
        self._http = httpx.AsyncClient(
            transport=_FalTransport(queue_url, secrets), headers=headers, timeout=timeout
        )
        self._fal = _RoutedAsyncClient(key or "", timeout, self._http)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def _handle(self, request: ProviderRequest) -> fal_client.AsyncRequestHandle:
        return fal_client.AsyncRequestHandle(
            request_id=request.request_id,
            response_url=request.response_url,
            status_url=request.status_url,
            cancel_url=request.cancel_url,
            client=self._http,
        )

    async def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        *,
        webhook_url: str | None = None,
        low_priority: bool = False,
    ) -> ProviderRequest:
        handle = await self._fal.submit(
            model, arguments, webhook_url=webhook_url, priority="low" if low_priority else None
        )
        return ProviderRequest(
            request_id=handle.request_id,
            status_url=handle.status_url,
            response_url=handle.response_url,
            cancel_url=handle.cancel_url,
        )

    async def status(self, request: ProviderRequest) -> Progress:
        try:
            status = await self._handle(request).status(with_logs=True)
        except (KeyError, ValueError) as exc:
            raise TransientError(
                f"malformed status answer: {exc}",
                provider=PROVIDER,
                error_class=ErrorClass.SERVER_ERROR,
            ) from None
        if isinstance(status, fal_client.Queued):
            return Progress(Phase.QUEUED, queue_position=status.position)
        if isinstance(status, fal_client.InProgress):
            return Progress(Phase.IN_PROGRESS, logs=_log_lines(status.logs))
        if isinstance(status, fal_client.Completed):
            return Progress(Phase.COMPLETED, logs=_log_lines(status.logs))
        raise TransientError(
            f"unknown status {status!r}", provider=PROVIDER, error_class=ErrorClass.SERVER_ERROR
        )

    async def result(self, request: ProviderRequest) -> Video:
        # A plain GET of the stored response URL: AsyncRequestHandle.get() would first poll the
        # status again, and we only ask for the result once the status said COMPLETED.
        response = await self._http.get(request.response_url)
        try:
            video = response.json()["video"]
            return Video(
                url=str(video["url"]),
                content_type=str(video.get("content_type", "")),
                file_name=str(video.get("file_name", "")),
                file_size=video.get("file_size"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(
                f"result has no video URL ({type(exc).__name__}: {exc})",
                provider=PROVIDER,
                error_class=ErrorClass.PROVIDER_FAILED,
            ) from None

    async def cancel(self, request: ProviderRequest) -> bool:
        try:
            await self._handle(request).cancel()
        except ProviderError as exc:
            if exc.status_code == 400:  # ALREADY_COMPLETED
                return False
            raise
        return True
