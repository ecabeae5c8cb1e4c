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
"""

from __future__ import annotations

import json

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
        self._session: aiohttp.ClientSession | None = None

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
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        what = f"{request.method} {url.path}"
        try:
            async with self._client().request(
                request.method,
                str(url),
                headers=headers,
                data=await request.aread() or None,
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
        response_headers = [(k, v) for k, v in raw_headers if k.lower() not in _SKIP_RESPONSE]
        if status >= 400:
            message = scrub(f"{what} -> {status}: {_detail(body)}", self._secrets)
            plain = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
            raise error_from_status(PROVIDER, status, message, plain)
        return httpx.Response(status, headers=response_headers, content=body, request=request)

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
