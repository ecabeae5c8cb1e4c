"""The simulator signs webhooks as fal does and publishes its keys as a JWKS."""

from __future__ import annotations

import base64
import hashlib
import time
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.simulator.app import SimulatorHandle
from tests.simulator.conftest import APP
from tests.simulator.test_webhooks import Receiver


class RawReceiver(Receiver):
    """Also keeps each delivery's headers and raw bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.raw.append((dict(request.headers), await request.read()))
        return await super().handle(request)


def _public_key(jwk: dict[str, str]) -> Ed25519PublicKey:
    x = jwk["x"]
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


async def _delivery(sim: SimulatorHandle, http: httpx.AsyncClient) -> tuple[dict[str, str], bytes]:
    receiver = RawReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        await http.post(f"/{APP}?{urlencode({'fal_webhook': hook})}", json={"prompt": "x"})
        await receiver.wait_for(1)
    finally:
        await runner.cleanup()
    return receiver.raw[0]


async def test_jwks_lists_the_signing_key(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/jwks.json")

    assert response.status_code == 200
    [key] = response.json()["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert key["kid"] == sim.state.signer.current.kid
    assert sim.stats()["calls"] == {"jwks": 1}


async def test_a_delivery_is_signed_over_ids_timestamp_and_body_hash(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    headers, body = await _delivery(sim, http)
    [jwk] = (await http.get("/.well-known/jwks.json")).json()["keys"]

    request_id = headers["X-Fal-Webhook-Request-Id"]
    timestamp = headers["X-Fal-Webhook-Timestamp"]
    message = "\n".join(
        [request_id, headers["X-Fal-Webhook-User-Id"], timestamp, hashlib.sha256(body).hexdigest()]
    ).encode()
    _public_key(jwk).verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)
    assert request_id.encode() in body
    assert abs(int(timestamp) - time.time()) < 60


@pytest.mark.parametrize("fault", ["bad_signature", "unknown_key"])
async def test_signature_faults_verify_with_no_published_key(
    sim: SimulatorHandle, http: httpx.AsyncClient, fault: str
) -> None:
    sim.configure(webhook_signature_fault=fault)
    headers, body = await _delivery(sim, http)
    [jwk] = (await http.get("/.well-known/jwks.json")).json()["keys"]

    message = "\n".join(
        [
            headers["X-Fal-Webhook-Request-Id"],
            headers["X-Fal-Webhook-User-Id"],
            headers["X-Fal-Webhook-Timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    with pytest.raises(InvalidSignature):
        _public_key(jwk).verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)


async def test_signing_can_be_turned_off(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    sim.configure(webhook_signing=False)
    headers, _ = await _delivery(sim, http)

    assert not any(name.lower().startswith("x-fal-webhook-") for name in headers)


async def test_rotation_keeps_or_drops_the_old_key(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    first = sim.state.signer.current.kid

    kept = (await http.post("/_sim/webhook_keys/rotate")).json()
    dropped = (await http.post("/_sim/webhook_keys/rotate", json={"keep_previous": False})).json()
    bad = await http.post("/_sim/webhook_keys/rotate", json={"keep_previous": "maybe"})

    assert [k["kid"] for k in kept["keys"]] == [kept["kid"], first]
    assert [k["kid"] for k in dropped["keys"]] == [dropped["kid"]]
    assert bad.status_code == 400
    sim.reset()  # keys are identity, not state: a reset keeps them
    assert (await http.get("/.well-known/jwks.json")).json() == {"keys": dropped["keys"]}


async def test_jwks_takes_faults(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    sim.configure(rules=[{"endpoint": "jwks", "fault": "503", "times": 1}])

    assert (await http.get("/.well-known/jwks.json")).status_code == 503
    assert (await http.get("/.well-known/jwks.json")).status_code == 200
