"""fal's webhook signatures: ED25519 over request id, user id, timestamp and the body's hash.

As fal documents it, each webhook carries `X-Fal-Webhook-Request-Id`, `X-Fal-Webhook-User-Id`,
`X-Fal-Webhook-Timestamp` (Unix seconds) and `X-Fal-Webhook-Signature` (hex). The signed message
is the first three values and the hex SHA-256 of the raw body, joined by newlines; receivers
check it against any key of fal's public JWKS (OKP / Ed25519, `x` in base64url). Headers name
no key, so a receiver finds out about a new key only by failing with every key it knows.

The simulator makes its key at start and keeps it across resets (a receiver's cached key set
stays right); `rotate` publishes a new one, keeping or dropping the old one.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.simulator.config import SignatureFault

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
USER_ID = "simulator-user"


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs for one delivery."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(kid=hashlib.sha256(raw).hexdigest()[:16], private=private)

    def jwk(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(raw),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }


class WebhookSigner:
    """The current signing key and the key set published at /.well-known/jwks.json."""

    def __init__(self) -> None:
        self.current = SigningKey.generate()
        self._published = [self.current]

    def rotate(self, *, keep_previous: bool = True) -> str:
        """Sign with a new key from now on; its kid. The old key stays published if asked."""
        self.current = SigningKey.generate()
        self._published = [self.current, *(self._published[:1] if keep_previous else [])]
        return self.current.kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self._published]}

    def headers(
        self, request_id: str, body: bytes, *, now: float, fault: SignatureFault | None = None
    ) -> dict[str, str]:
        """The four signature headers for one delivery of `body` at wall-clock time `now`."""
        timestamp = str(int(now))
        message = signed_message(request_id, USER_ID, timestamp, body)
        key = SigningKey.generate().private if fault == "unknown_key" else self.current.private
        signature = bytearray(key.sign(message))
        if fault == "bad_signature":
            signature[0] ^= 0xFF
        return {
            REQUEST_ID_HEADER: request_id,
            USER_ID_HEADER: USER_ID,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature.hex(),
        }
