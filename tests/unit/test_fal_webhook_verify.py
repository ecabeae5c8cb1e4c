"""fal webhook signatures: real simulator deliveries to a real receiver, checked by the verifier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from common.attempts.kind import KindHandler
from common.resilience import TransientError
from services.gateway.http_api import FAL_READERS
from services.simulator.app import SimulatorHandle
from services.video_worker.fal_adapter import FalVideoProvider, reported_video
from services.video_worker.fal_webhook import (
    MAX_RESULT,
    SIGNATURE_HEADER,
    SIGNED_HEADERS,
    BadWebhook,
    FalWebhookVerifier,
    result_of,
)
from services.video_worker.segments import VideoSegments
from tests.support.stack import FAL_KEY

MODEL = "fal-ai/kling-video/v1/standard/image-to-video"


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint that keeps each delivery's headers and raw body."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        delivery = Delivery(dict(request.headers), await request.read())
        async with self.arrived:
            self.deliveries.append(delivery)
            self.arrived.notify_all()
        return web.json_response({})

    async def next(self) -> Delivery:
        """Wait for the delivery after the ones already seen."""
        seen = len(self.deliveries)
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.deliveries) > seen)
        return self.deliveries[seen]


class WallClock:
    """Unix seconds that move only when told to (starting now, so fresh timestamps pass)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield receiver
    await runner.cleanup()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def verifier(sim: SimulatorHandle, clock: WallClock) -> AsyncIterator[FalWebhookVerifier]:
    async with FalWebhookVerifier(f"{sim.url}/.well-known/jwks.json", clock=clock) as verifier:
        yield verifier


@pytest.fixture
async def fal(sim: SimulatorHandle) -> AsyncIterator[FalVideoProvider]:
    sim.configure(latency=0)
    async with FalVideoProvider(
        key=FAL_KEY, queue_url=sim.url, timeout=2.0, secrets=[FAL_KEY]
    ) as provider:
        yield provider


async def _webhook(fal: FalVideoProvider, receiver: Receiver) -> tuple[str, Delivery]:
    """Submit a real request with a webhook and wait for its (signed) delivery."""
    request = await fal.submit(MODEL, {"prompt": "a duel"}, webhook_url=receiver.url)
    return request.request_id, await receiver.next()


def _jwks_fetches(sim: SimulatorHandle) -> int:
    return int(sim.stats(with_logs=False)["calls"].get("jwks", 0))


def _forged(delivery: Delivery) -> Delivery:
    signature = delivery.headers[SIGNATURE_HEADER]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    return Delivery({**delivery.headers, SIGNATURE_HEADER: flipped}, delivery.body)


async def test_a_simulator_signed_webhook_verifies(
    fal: FalVideoProvider, receiver: Receiver, verifier: FalWebhookVerifier, sim: SimulatorHandle
) -> None:
    request_id, delivery = await _webhook(fal, receiver)

    assert (await verifier.verify(delivery.headers, delivery.body)).request_id == request_id
    lowered = {k.lower(): v for k, v in delivery.headers.items()}
    assert (await verifier.verify(lowered, delivery.body)).request_id == request_id  # any case
    assert _jwks_fetches(sim) == 1  # the key set is cached


async def test_an_ok_webhook_carries_the_result_its_result_url_gives(
    fal: FalVideoProvider, receiver: Receiver, verifier: FalWebhookVerifier
) -> None:
    request = await fal.submit(MODEL, {"prompt": "a duel"}, webhook_url=receiver.url)
    delivery = await receiver.next()

    callback = await verifier.verify(delivery.headers, delivery.body)

    assert callback.request_id == request.request_id
    assert reported_video(callback.result) == await fal.result(request)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "ERROR", "payload": {"detail": "generation failed"}},
        {"status": "OK", "payload": None, "payload_error": "not JSON serializable"},
        {"status": "OK", "payload": {"video": {"url": "u"}}, "payload_error": "truncated"},
        {"status": "OK", "payload": "a string"},
        {"status": "OK", "payload": {"video": {"url": "u" * MAX_RESULT}}},
    ],
)
def test_a_webhook_with_no_usable_result_carries_none(body: dict[str, object]) -> None:
    assert result_of({"request_id": "r1", **body}) == ""


def test_a_carried_result_without_a_video_is_fetched_instead() -> None:
    assert reported_video('{"video": {"url": "https://cdn/v.mp4"}}') is not None
    assert reported_video('{"seed": 3}') is None
    assert reported_video('{"video": "nope"}') is None
    assert reported_video("not json") is None
    assert reported_video('{"video": {"url": "javascript:alert(1)"}}') is None
    assert reported_video('{"video": {"url": "https://cdn/' + "x" * 2048 + '"}}') is None
    odd = reported_video('{"video": {"url": "https://cdn/v.mp4", "file_size": {"a": 1}}}')
    assert odd is not None and odd.file_size is None


def test_the_kinds_the_gateway_records_from_call_backs_have_no_hooks_it_would_skip() -> None:
    # The gateway records a carried result with no worker step: a kind's `on_success` and
    # `after_commit` would not run there.
    handlers = {VideoSegments.spec.name: VideoSegments}
    for kind in FAL_READERS:
        assert handlers[kind].on_success is KindHandler.on_success
        assert handlers[kind].after_commit is KindHandler.after_commit


async def test_a_tampered_body_is_refused(
    fal: FalVideoProvider, receiver: Receiver, verifier: FalWebhookVerifier
) -> None:
    _, delivery = await _webhook(fal, receiver)
    tampered = delivery.body.replace(b'"OK"', b'"ERROR"')
    assert tampered != delivery.body

    with pytest.raises(BadWebhook, match="verifies with no key"):
        await verifier.verify(delivery.headers, tampered)


async def test_a_body_about_another_request_is_refused(
    fal: FalVideoProvider, receiver: Receiver, verifier: FalWebhookVerifier
) -> None:
    first_id, first = await _webhook(fal, receiver)
    _, second = await _webhook(fal, receiver)

    with pytest.raises(BadWebhook, match="differs"):
        await verifier.verify(second.headers, first.body)
    assert first_id.encode() in first.body


@pytest.mark.parametrize("fault", ["bad_signature", "unknown_key"])
async def test_a_signature_by_no_published_key_is_refused(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    sim: SimulatorHandle,
    fault: str,
) -> None:
    sim.configure(webhook_signature_fault=fault)
    _, delivery = await _webhook(fal, receiver)

    with pytest.raises(BadWebhook, match="verifies with no key"):
        await verifier.verify(delivery.headers, delivery.body)


@pytest.mark.parametrize(("shift", "says"), [(301, "s old"), (-301, "in the future")])
async def test_a_timestamp_out_of_tolerance_is_refused(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    clock: WallClock,
    shift: float,
    says: str,
) -> None:
    _, delivery = await _webhook(fal, receiver)
    clock.advance(shift)

    with pytest.raises(BadWebhook, match=says):
        await verifier.verify(delivery.headers, delivery.body)


@pytest.mark.parametrize("missing", SIGNED_HEADERS)
async def test_a_missing_header_is_refused(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    sim: SimulatorHandle,
    missing: str,
) -> None:
    _, delivery = await _webhook(fal, receiver)
    headers = {k: v for k, v in delivery.headers.items() if k.lower() != missing.lower()}

    with pytest.raises(BadWebhook, match=f"missing header {missing}"):
        await verifier.verify(headers, delivery.body)
    assert _jwks_fetches(sim) == 0  # refused before any key was needed


async def test_unsigned_webhooks_are_refused(
    fal: FalVideoProvider, receiver: Receiver, verifier: FalWebhookVerifier, sim: SimulatorHandle
) -> None:
    sim.configure(webhook_signing=False)
    _, delivery = await _webhook(fal, receiver)

    assert SIGNATURE_HEADER not in delivery.headers
    with pytest.raises(BadWebhook, match="missing header"):
        await verifier.verify(delivery.headers, delivery.body)


async def test_a_rotated_key_is_fetched_once(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    sim: SimulatorHandle,
    clock: WallClock,
) -> None:
    _, before = await _webhook(fal, receiver)
    await verifier.verify(before.headers, before.body)
    sim.rotate_webhook_key(keep_previous=False)
    clock.advance(31)
    deliveries = [await _webhook(fal, receiver) for _ in range(3)]

    # Concurrent webhooks signed by the new key share one refetch.
    verified = await asyncio.gather(*(verifier.verify(d.headers, d.body) for _, d in deliveries))

    assert [c.request_id for c in verified] == [request_id for request_id, _ in deliveries]
    assert _jwks_fetches(sim) == 2
    with pytest.raises(BadWebhook):  # the withdrawn key is no longer trusted
        await verifier.verify(before.headers, before.body)


async def test_forged_calls_refetch_at_most_once_per_30_seconds(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    sim: SimulatorHandle,
    clock: WallClock,
) -> None:
    _, delivery = await _webhook(fal, receiver)
    await verifier.verify(delivery.headers, delivery.body)
    forged = _forged(delivery)

    fetches = []
    for _ in range(3):
        for _ in range(5):
            with pytest.raises(BadWebhook):
                await verifier.verify(forged.headers, forged.body)
        fetches.append(_jwks_fetches(sim))
        clock.advance(30)

    # The first burst comes within 30 s of the first fetch; each later one may refetch once.
    assert fetches == [1, 2, 3]


async def test_an_unreachable_key_set_is_transient_not_a_bad_webhook(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    sim: SimulatorHandle,
    clock: WallClock,
) -> None:
    sim.configure(rules=[{"endpoint": "jwks", "fault": "503"}])
    _, delivery = await _webhook(fal, receiver)

    for _ in range(3):
        with pytest.raises(TransientError):
            await verifier.verify(delivery.headers, delivery.body)
    assert _jwks_fetches(sim) == 1

    sim.configure(rules=[])
    clock.advance(30)
    assert await verifier.verify(delivery.headers, delivery.body)
    assert _jwks_fetches(sim) == 2


async def test_the_key_set_is_refreshed_when_old(
    fal: FalVideoProvider, receiver: Receiver, sim: SimulatorHandle, clock: WallClock
) -> None:
    _, delivery = await _webhook(fal, receiver)
    async with FalWebhookVerifier(
        f"{sim.url}/.well-known/jwks.json", clock=clock, keys_ttl=60
    ) as verifier:
        await verifier.verify(delivery.headers, delivery.body)
        clock.advance(59)
        await verifier.verify(delivery.headers, delivery.body)
        assert _jwks_fetches(sim) == 1
        clock.advance(1)
        await verifier.verify(delivery.headers, delivery.body)
        assert _jwks_fetches(sim) == 2


@pytest.mark.parametrize(
    ("header", "value", "says"),
    [
        ("X-Fal-Webhook-Timestamp", "soon", "not Unix seconds"),
        (SIGNATURE_HEADER, "zz", "not 64 bytes"),
        (SIGNATURE_HEADER, "ab" * 63, "not 64 bytes"),
    ],
)
async def test_malformed_headers_are_refused(
    fal: FalVideoProvider,
    receiver: Receiver,
    verifier: FalWebhookVerifier,
    header: str,
    value: str,
    says: str,
) -> None:
    _, delivery = await _webhook(fal, receiver)

    with pytest.raises(BadWebhook, match=says):
        await verifier.verify({**delivery.headers, header: value}, delivery.body)
