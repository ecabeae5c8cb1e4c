"""fal.ai through the real `fal_client.AsyncClient`, with one retry layer: ours.

fal-client sends every queue call through `FalTransport` (see fal_transport.py): it routes
fal's fixed host to FAL_QUEUE_URL, turns every failure into our error tree before fal-client's
hidden retry loop can see it, and carries the bytes over aiohttp.

fal's own rules live here and nowhere else: a request is found again by the status, response
and cancel URLs fal returned at submit (kept as the task's handle), or, for a request adopted
from its webhook after the submit's answer was lost, by the URLs fal-client derives from the
model's app id; a 422 on status or result means the generation
failed; a 400 on the result means it is not finished yet; a 400 on cancel means it already
finished.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, Self

import fal_client
import httpx

from common.resilience import (
    ErrorClass,
    PermanentError,
    ProviderError,
    TransientError,
)
from common.resilience.hedging import Hedge
from services.video_worker.fal_transport import PROVIDER, FalTransport
from services.video_worker.ports import GenerationFailed, Phase, Progress, ProviderRequest, Video

_URLS = ("status_url", "response_url", "cancel_url")
# The shortest hedge delay: below it, a second copy would mostly race an answer on its way.
HEDGE_FLOOR = 0.05


def _log_lines(logs: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(str(entry.get("message", "")) for entry in logs or [])


class _RoutedAsyncClient(fal_client.AsyncClient):
    """`fal_client.AsyncClient` whose HTTP client uses `FalTransport`."""

    def __init__(self, key: str | None, timeout: float, http: httpx.AsyncClient) -> None:
        super().__init__(key=key, default_timeout=timeout)
        self._http = http

    @property
    async def _client(self) -> httpx.AsyncClient:
        return self._http


class FalVideoProvider:
    """`VideoProvider` for fal.ai's queue API."""

    def __init__(
        self,
        *,
        key: str | None,
        queue_url: str,
        timeout: float,
        secrets: list[str],
        hedged_reads: bool = True,
    ) -> None:
        headers = {"User-Agent": f"generation-orchestrator fal-client/{fal_client.__version__}"}
        if key:
            headers["Authorization"] = f"Key {key}"
        self._headers = headers
        self._timeout = timeout
        self._transport = FalTransport(queue_url, secrets)
        self._http = httpx.AsyncClient(transport=self._transport, headers=headers, timeout=timeout)
        self._fal = _RoutedAsyncClient(key or "", timeout, self._http)
        # Status checks and result fetches are reads: a slow or failed one gets a second copy.
        self.hedge = (
            Hedge(PROVIDER, floor=min(HEDGE_FLOOR, timeout / 2), ceiling=timeout / 2)
            if hedged_reads
            else None
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def _handle(self, request: ProviderRequest) -> fal_client.AsyncRequestHandle:
        urls = request.handle
        if "status_url" not in urls:  # adopted from a webhook: only the model is known
            return fal_client.AsyncRequestHandle.from_request_id(
                self._http, str(urls.get("model", "")), request.request_id
            )
        return fal_client.AsyncRequestHandle(
            request_id=request.request_id,
            response_url=str(urls.get("response_url", "")),
            status_url=str(urls.get("status_url", "")),
            cancel_url=str(urls.get("cancel_url", "")),
            client=self._http,
        )

    def _url(self, request: ProviderRequest, name: str) -> str:
        """The request's stored status or response URL (fal-client's, for an adopted one)."""
        url = request.handle.get(name)
        return str(url) if url else str(getattr(self._handle(request), name))

    async def _get(self, url: str) -> bytes:
        """A status check or result fetch: one GET straight on fal-client's transport, as
        fal-client would send it (its headers, its routing, the same errors), without building
        a fal-client handle and httpx request/response objects per call; hedged (see
        common.resilience.hedging) unless turned off."""

        def read() -> Awaitable[bytes]:
            return self._transport.get(url, self._headers, read_timeout=self._timeout)

        return await (read() if self.hedge is None else self.hedge.read(read))

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
            handle={name: getattr(handle, name) for name in _URLS},
        )

    async def status(self, request: ProviderRequest) -> Progress:
        url = self._url(request, "status_url")
        try:
            data = json.loads(await self._get(url + ("&" if "?" in url else "?") + "logs=true"))
            phase = data["status"]
        except TransientError as exc:
            raise _failed_generation(exc) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientError(
                f"malformed status answer: {type(exc).__name__}: {exc}",
                provider=PROVIDER,
                error_class=ErrorClass.SERVER_ERROR,
            ) from None
        if phase == "IN_QUEUE":
            position = data.get("queue_position")
            return Progress(
                Phase.QUEUED, queue_position=position if isinstance(position, int) else None
            )
        if phase == "IN_PROGRESS":
            return Progress(Phase.IN_PROGRESS, logs=_log_lines(data.get("logs")))
        if phase == "COMPLETED":
            return Progress(
                Phase.COMPLETED, logs=_log_lines(data.get("logs")), ran_for=_ran_for(data)
            )
        raise TransientError(
            f"unknown status {str(phase)[:50]!r}",
            provider=PROVIDER,
            error_class=ErrorClass.SERVER_ERROR,
        )

    async def result(self, request: ProviderRequest) -> Video | Progress:
        # A plain GET of the stored response URL: AsyncRequestHandle.get() would first poll the
        # status again, and we only ask for the result once the status said COMPLETED (or a
        # webhook did).
        try:
            body = await self._get(self._url(request, "response_url"))
        except TransientError as exc:
            raise _failed_generation(exc) from None
        except PermanentError as exc:
            if exc.status_code == 400:  # "Request is still in progress"
                return Progress(Phase.IN_PROGRESS)
            raise
        try:
            return _video_in(body)
        except _NOT_A_VIDEO as exc:
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


# The longest video URL taken from a result, and content type or file name kept.
MAX_URL = 2048
MAX_TEXT = 256
# What `_video_in` raises for a body that is not JSON or holds no video.
_NOT_A_VIDEO = (KeyError, TypeError, ValueError, AttributeError)


def reported_video(result: str) -> Video | None:
    """The video of a result fal's call-back carried (JSON), or None when it holds none: the
    worker then fetches the result, which is what counts."""
    try:
        return _video_in(result)
    except _NOT_A_VIDEO:
        return None


def _video_in(body: str | bytes) -> Video:
    """The video of a fal result (`{"video": {"url", ...}, ...}`): an http(s) URL, and what
    else it says of the file when it is of the expected type (ValueError without a URL)."""
    video = json.loads(body)["video"]
    url = video["url"]
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ValueError("video.url: not an http(s) URL")
    if len(url) > MAX_URL:
        raise ValueError(f"video.url: longer than {MAX_URL} characters")
    size = video.get("file_size")
    return Video(
        url=url,
        content_type=_text(video.get("content_type")),
        file_name=_text(video.get("file_name")),
        file_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
    )


def _text(value: object) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _ran_for(status: dict[str, Any]) -> float | None:
    """fal's `metrics.inference_time` of a COMPLETED status: seconds the generation ran."""
    metrics = status.get("metrics")
    seconds = metrics.get("inference_time") if isinstance(metrics, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return float(seconds)
    return None


def _failed_generation(exc: TransientError) -> TransientError:
    """A 422 from fal says the generation failed; anything else is a failed call."""
    if exc.error_class is not ErrorClass.UNPROCESSABLE:
        return exc
    return GenerationFailed(
        exc.message,
        provider=exc.provider,
        error_class=exc.error_class,
        status_code=exc.status_code,
        retry_after=exc.retry_after,
    )
