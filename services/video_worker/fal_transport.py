"""The httpx transport under fal-client: where fal's host goes, which errors come out, and
which connection pool carries the bytes.

* **Host.** fal-client fixes its hosts at import: the queue (`https://queue.fal.run`), the REST
  API (`https://rest.fal.ai`: CDN tokens) and the CDN (`https://v3.fal.media`, or the `base_url`
  a CDN token names). One rule (`route`): when `FAL_QUEUE_URL` is not itself a fal host, every
  request for a fal host (the queue host, or any host under fal.run, fal.ai or fal.media) goes
  to `FAL_QUEUE_URL` instead, its path appended to that URL's path. So the real client talks to
  one fal-compatible server (the local simulator in tests and `make run`) for queue, storage and
  keys alike, and pointed at fal it changes nothing. Other hosts (URLs a server handed back, such
  as status, result and cancel URLs, which are persisted and reused) are left as they are.
* **Hidden retries.** fal-client retries every queue call up to 10 times (408/409/429, some
  502-504, transport errors) with its own backoff that ignores Retry-After, and may re-POST a
  submit after a read timeout — a second paid request. This transport raises our own
  `ProviderError`s (not httpx errors) for every HTTP error and transport failure; fal-client's
  retry loop only catches httpx/fal errors, so its retries never fire. Retries, Retry-After and
  the circuit breaker are decided once, by common.resilience.
* **Pool.** Requests travel over aiohttp, not httpcore. Measured against the simulator on this
  machine, httpcore's pool spent ~1-3 ms per request (it scans every pooled connection, with a
  select() per idle one) where aiohttp needs ~0.1-0.2 ms; fal-client still builds every request
  and parses every answer through httpx as usual.
* **Direct GETs.** Status checks and result fetches, the bulk of a polled segment's calls, skip
  fal-client and httpx altogether (`get`): same routing, same headers, same errors, straight
  on the pool. Through fal-client each poll built a request handle, an httpx request, URL and
  response and ran fal-client's retry wrapper: about half the video worker's CPU per poll.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
import httpx
from fal_client.client import QUEUE_URL_FORMAT

from common.resilience import connection_error, error_from_status, scrub, timeout_error

PROVIDER = "fal"
_FAL_QUEUE = httpx.URL(QUEUE_URL_FORMAT)
FAL_DOMAINS = ("fal.run", "fal.ai", "fal.media")
# aiohttp computes these itself (and decompresses bodies), so httpx must not see them twice.
_SKIP_REQUEST = frozenset({"content-length", "transfer-encoding", "connection"})
_SKIP_RESPONSE = frozenset({b"content-length", b"content-encoding", b"transfer-encoding"})
MAX_CONNECTIONS = 100
RawHeaders = tuple[tuple[bytes, bytes], ...]


def is_fal_host(host: str) -> bool:
    """fal's queue host (FAL_QUEUE_RUN_HOST may move it) or any host under fal's domains."""
    return host == _FAL_QUEUE.host or any(
        host == domain or host.endswith("." + domain) for domain in FAL_DOMAINS
    )


def route(url: httpx.URL, base: httpx.URL) -> httpx.URL:
    """Where a request for `url` goes when fal is reached through `base` (see module doc)."""
    if is_fal_host(base.host) or not is_fal_host(url.host):
        return url
    path = base.path.rstrip("/") + url.path
    return url.copy_with(scheme=base.scheme, host=base.host, port=base.port, path=path)


def route_url(url: str, queue_url: str) -> str:
    """`route` for plain strings: e.g. fal's JWKS URL for a verifier, given FAL_QUEUE_URL."""
    return str(route(httpx.URL(url), httpx.URL(queue_url)))


class FalTransport(httpx.AsyncBaseTransport):
    def __init__(self, queue_url: str, secrets: list[str]) -> None:
        self._base = httpx.URL(queue_url.rstrip("/") + "/")
        self._secrets = secrets
        self._base_is_fal = is_fal_host(self._base.host)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                auto_decompress=True,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = route(request.url, self._base)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        headers["Host"] = url.netloc.decode("ascii")
        limits = request.extensions.get("timeout", {})
        status, raw_headers, body = await self._send(
            request.method,
            str(url),
            f"{request.method} {url.path}",
            headers=headers,
            data=await request.aread() or None,
            connect=limits.get("connect"),
            read=limits.get("read"),
        )
        response_headers = [(k, v) for k, v in raw_headers if k.lower() not in _SKIP_RESPONSE]
        return httpx.Response(status, headers=response_headers, content=body, request=request)

    async def get(
        self, url: str, headers: Mapping[str, str], *, read_timeout: float | None = None
    ) -> bytes:
        """GET `url` (routed as fal-client's requests are) straight on the pool: the body, or
        the same `ProviderError` a request through fal-client would raise. Status checks and
        result fetches come this way: no httpx request, response or URL objects per call."""
        routed = self._route_str(url)
        what = f"GET {urlsplit(routed).path}"
        _, _, body = await self._send(
            "GET", routed, what, headers=headers, data=None, connect=read_timeout, read=read_timeout
        )
        return body

    def _route_str(self, url: str) -> str:
        if self._base_is_fal:
            return url
        host = urlsplit(url).hostname or ""
        return str(route(httpx.URL(url), self._base)) if is_fal_host(host) else url

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str],
        data: bytes | None,
        connect: float | None,
        read: float | None,
    ) -> tuple[int, RawHeaders, bytes]:
        """One exchange on the pool; every failure raised as a `ProviderError`."""
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
            self._timeouts[(connect, read)] = timeout
        try:
            async with self._client().request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                body = await answer.read()
                status, raw_headers = answer.status, answer.raw_headers
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise timeout_error(PROVIDER, f"{what} timed out ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            message = scrub(f"{what} failed: {type(exc).__name__}: {exc}", self._secrets)
            raise connection_error(PROVIDER, message) from None
        if status >= 400:
            message = scrub(f"{what} -> {status}: {_detail(body)}", self._secrets)
            plain = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
            raise error_from_status(PROVIDER, status, message, plain)
        return status, raw_headers, body

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _detail(body: bytes) -> str:
    text = body.decode(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        return json.dumps(data.get("detail", data.get("status", data)))[:300]
    return json.dumps(data)[:300]
