"""fal's completion call-back: where it arrives, what it says, and how to know fal sent it.

fal POSTs `{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}`
to the `fal_webhook` URL given at submit, possibly more than once.

Every delivery is signed (fal's "Verifying your webhook"): headers `X-Fal-Webhook-Request-Id`,
`X-Fal-Webhook-User-Id`, `X-Fal-Webhook-Timestamp` (Unix seconds) and `X-Fal-Webhook-Signature`
(hex ED25519 over those three values and the hex SHA-256 of the raw body, joined by newlines),
checked against any key of fal's public JWKS. The headers name no key, so a key fal has rotated
in shows up only as a signature that no cached key verifies: that is when the verifier fetches
the key set again, at most once per `min_refetch_interval`, so forged calls cannot make us
hammer fal's JWKS. The set is also refetched when older than `keys_ttl`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.attempts.kind import Reported
from common.domain.records import TaskRecord
from common.resilience import (
    ErrorClass,
    ProviderError,
    TransientError,
    connection_error,
    error_from_status,
    timeout_error,
)
from services.video_worker.fal_adapter import reported_video
from services.video_worker.segments import video_ready

logger = logging.getLogger(__name__)

PROVIDER = "fal"
WEBHOOK_PATH = f"/webhooks/{PROVIDER}"
MAX_REQUEST_ID = 128

FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
SIGNED_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

TOLERANCE = 300.0  # seconds a timestamp may be off: fal's example uses five minutes
KEYS_TTL = 3600.0  # keys rotate rarely; an hour bounds how long a withdrawn key is trusted
MIN_REFETCH_INTERVAL = 30.0
FETCH_TIMEOUT = 5.0
# An OK call-back's result is read (common.attempts.webhooks) when its JSON is at most this
# long; a longer one is fetched by the worker, like one fal could not serialise.
MAX_RESULT = 16 * 1024
OKP_ED25519 = ("OKP", "Ed25519")  # a JWK's (kty, crv) for an Ed25519 public key
_SIGNATURE_BYTES = 64

# Wall-clock Unix seconds (timestamps are compared with it); injectable for tests.
Clock = Callable[[], float]


class BadWebhook(ValueError):
    """Not a call-back fal would send."""


@dataclass(frozen=True)
class Callback:
    """A genuine call-back: the request it is about and, for a request that succeeded, the
    result it carried as compact JSON ("" when it carried none: the worker fetches it)."""

    request_id: str
    result: str = ""


def result_of(body: dict[str, Any]) -> str:
    """The result an OK call-back carried, as compact JSON; "" for an error, no payload (fal's
    `payload_error`), or one longer than MAX_RESULT."""
    payload = body.get("payload")
    if body.get("status") != "OK" or body.get("payload_error") or not isinstance(payload, dict):
        return ""
    text = json.dumps(payload, separators=(",", ":"))
    return text if len(text) <= MAX_RESULT else ""


def read_reported(task: TaskRecord, result: str) -> Reported | None:
    """A segment's outcome from the result fal's call-back carried (`Callback.result`), or None
    when it holds no video: the worker then fetches the result."""
    video = reported_video(result)
    if video is None:
        return None
    return Reported(video_ready(video, None), str(task.payload["model"]))


def request_id_of(body: Any) -> str:
    """The request a call-back is about."""
    if not isinstance(body, dict):
        raise BadWebhook("body: must be a JSON object")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise BadWebhook("request_id: required")
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise BadWebhook(f"request_id: at most {MAX_REQUEST_ID} printable characters")
    return request_id


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs for one delivery."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def public_keys(jwks: object) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document; keys of other types or malformed ones are skipped."""
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    keys: list[Ed25519PublicKey] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or (entry.get("kty"), entry.get("crv")) != OKP_ED25519:
            continue
        x = entry.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError):
            continue
    return keys


class FalWebhookVerifier:
    """Checks fal's webhook signatures against fal's JWKS; owns the HTTP session that fetches it.

    `verify` returns the `Callback` or raises `BadWebhook` (answer 4xx: not from fal). When the
    key set cannot be fetched and none is cached it raises the fetch's `ProviderError` instead:
    answer 5xx, so fal delivers again later.
    """

    def __init__(
        self,
        jwks_url: str = FAL_JWKS_URL,
        *,
        tolerance: float = TOLERANCE,
        clock: Clock = time.time,
        keys_ttl: float = KEYS_TTL,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self._jwks_url = jwks_url
        self._tolerance = tolerance
        self._clock = clock
        self._keys_ttl = keys_ttl
        self._min_refetch_interval = min_refetch_interval
        self._fetch_timeout = fetch_timeout
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._keys: list[Ed25519PublicKey] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._generation = 0  # bumped by each successful fetch

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, headers: Mapping[str, str], body: bytes) -> Callback:
        """What a genuine fal webhook with raw body `body` says; `BadWebhook` if not genuine."""
        lowered = {name.lower(): value for name, value in headers.items()}
        values = []
        for name in SIGNED_HEADERS:
            value = lowered.get(name.lower(), "").strip()
            if not value:
                raise BadWebhook(f"missing header {name}")
            values.append(value)
        request_id, user_id, timestamp, signature_hex = values
        self._check_timestamp(timestamp)
        signature = _signature_bytes(signature_hex)
        try:
            parsed = json.loads(body)
        except ValueError:
            raise BadWebhook("body: not JSON") from None
        if request_id_of(parsed) != request_id:
            raise BadWebhook(f"request_id of the body differs from {REQUEST_ID_HEADER}")
        message = signed_message(request_id, user_id, timestamp, body)
        keys, generation = await self._current_keys()
        if _verifies(keys, signature, message) or (
            # fal may have rotated its key: look again, unless we looked moments ago.
            await self._refresh(seen=generation) and _verifies(self._keys or [], signature, message)
        ):
            return Callback(request_id, result_of(parsed))
        raise BadWebhook("signature: verifies with no key of fal's JWKS")

    def _check_timestamp(self, raw: str) -> None:
        if not raw.isdigit():
            raise BadWebhook(f"{TIMESTAMP_HEADER}: not Unix seconds")
        age = self._clock() - int(raw)
        if age > self._tolerance:
            raise BadWebhook(f"timestamp is {age:.0f} s old (tolerance {self._tolerance:.0f} s)")
        if -age > self._tolerance:
            raise BadWebhook(
                f"timestamp is {-age:.0f} s in the future (tolerance {self._tolerance:.0f} s)"
            )

    async def _current_keys(self) -> tuple[list[Ed25519PublicKey], int]:
        """The cached keys (fetched first if none or too old) and their generation."""
        if self._keys is None or self._clock() - self._fetched_at >= self._keys_ttl:
            await self._refresh(seen=self._generation)
        if self._keys is None:
            retry_in = self._min_refetch_interval - (self._clock() - (self._attempted_at or 0))
            raise TransientError(
                f"fal's JWKS is not available yet; next fetch in {max(retry_in, 0):.0f} s",
                provider=PROVIDER,
                error_class=ErrorClass.CONNECTION,
                retry_after=max(retry_in, 0),
            )
        return self._keys, self._generation

    async def _refresh(self, *, seen: int) -> bool:
        """Fetch the key set unless one was tried in the last `min_refetch_interval`.

        True when keys newer than generation `seen` are now cached (fetched here, or by a
        concurrent call while this one waited). A failed fetch keeps the old keys and raises
        only when there are none.
        """
        async with self._lock:
            if self._generation != seen:
                return True
            now = self._clock()
            if (
                self._attempted_at is not None
                and now - self._attempted_at < self._min_refetch_interval
            ):
                return False
            self._attempted_at = now
            try:
                keys = await self._fetch()
            except ProviderError as exc:
                if self._keys is None:
                    raise
                logger.warning("fal JWKS refetch failed, keeping cached keys: %s", exc.message)
                return False
            self._keys, self._fetched_at = keys, now
            self._generation += 1
            logger.info("fetched %d fal webhook key(s) from %s", len(keys), self._jwks_url)
            return True

    async def _fetch(self) -> list[Ed25519PublicKey]:
        what = f"GET {self._jwks_url}"
        timeout = aiohttp.ClientTimeout(total=self._fetch_timeout)
        try:
            async with self._client().get(self._jwks_url, timeout=timeout) as response:
                data = await response.read()
                status, headers = response.status, dict(response.headers)
        except TimeoutError:
            raise timeout_error(PROVIDER, f"{what} timed out") from None
        except aiohttp.ClientError as exc:
            raise connection_error(PROVIDER, f"{what} failed: {type(exc).__name__}") from None
        if status >= 400:
            raise error_from_status(PROVIDER, status, f"{what} -> {status}", headers)
        try:
            keys = public_keys(json.loads(data))
        except ValueError:
            keys = []
        if not keys:
            raise TransientError(
                f"{what}: no Ed25519 key in the answer",
                provider=PROVIDER,
                error_class=ErrorClass.SERVER_ERROR,
            )
        return keys

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop, on first use
            self._session = aiohttp.ClientSession()
        return self._session


def _signature_bytes(raw: str) -> bytes:
    try:
        signature = bytes.fromhex(raw)
    except ValueError:
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise BadWebhook(f"{SIGNATURE_HEADER}: not {_SIGNATURE_BYTES} bytes in hex")
    return signature


def _verifies(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
