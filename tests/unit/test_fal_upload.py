"""The fal uploader: the real fal_client upload against the simulator's REST and CDN endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from common.resilience import ErrorClass, PermanentError, TransientError
from services.simulator.app import SimulatorHandle
from services.video_worker.fal_transport import route_url
from services.video_worker.fal_upload import MAX_UPLOAD_BYTES, FalUploader, InvalidUpload
from tests.support.stack import FAL_KEY

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(64))


@pytest.fixture
async def uploader(sim: SimulatorHandle) -> AsyncIterator[FalUploader]:
    async with FalUploader(key=FAL_KEY, queue_url=sim.url, timeout=1.0, secrets=[FAL_KEY]) as up:
        yield up


async def test_upload_round_trip(uploader: FalUploader, sim: SimulatorHandle) -> None:
    url = await uploader.upload(PNG, "image/png", "frame.png")
    again = await uploader.upload(JPEG, "image/jpeg", "other.jpg")

    assert url.startswith(f"{sim.url}/cdn/") and url.endswith("/frame.png")
    async with httpx.AsyncClient() as http:  # the URL is public: no key needed
        served = await http.get(url)
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert again != url
    stats = sim.stats(with_logs=False)
    assert stats["uploads"]["files"] == 2
    assert stats["uploads"]["bytes"] == len(PNG) + len(JPEG)
    # One CDN token for both uploads: fal-client caches it until it expires.
    assert stats["calls"] == {"upload_token": 1, "upload": 2}


async def test_wrong_key_is_an_auth_error(sim: SimulatorHandle) -> None:
    async with FalUploader(
        key="wrong-key", queue_url=sim.url, timeout=1.0, secrets=["wrong-key"]
    ) as uploader:
        with pytest.raises(PermanentError) as caught:
            await uploader.upload(PNG, "image/png", "frame.png")

    assert caught.value.error_class is ErrorClass.AUTH
    assert caught.value.status_code == 401
    assert "wrong-key" not in str(caught.value)
    assert sim.stats(with_logs=False)["uploads"]["files"] == 0


@pytest.mark.parametrize(
    ("endpoint", "fault", "error_class"),
    [
        ("upload", "503", ErrorClass.SERVER_ERROR),
        ("upload", "429", ErrorClass.RATE_LIMITED),
        ("upload", "reset", ErrorClass.CONNECTION),
        ("upload", "timeout", ErrorClass.TIMEOUT),
        ("upload_token", "503", ErrorClass.SERVER_ERROR),
        ("upload_token", "reset", ErrorClass.CONNECTION),
    ],
)
async def test_failures_come_out_once_as_transient_errors(
    uploader: FalUploader,
    sim: SimulatorHandle,
    endpoint: str,
    fault: str,
    error_class: ErrorClass,
) -> None:
    sim.configure(rules=[{"endpoint": endpoint, "fault": fault}], hang_seconds=3)

    with pytest.raises(TransientError) as caught:
        await uploader.upload(PNG, "image/png", "frame.png")

    assert caught.value.error_class is error_class
    assert FAL_KEY not in str(caught.value)
    assert FAL_KEY not in repr(caught.value)
    # Neither fal-client's retry loop nor its fallback upload path made a second call.
    assert sim.stats(with_logs=False)["calls"][endpoint] == 1


async def test_retry_after_is_carried(uploader: FalUploader, sim: SimulatorHandle) -> None:
    sim.configure(faults=[{"endpoints": ["upload"], "rates": {"429": 1.0}, "retry_after": 7}])

    with pytest.raises(TransientError) as caught:
        await uploader.upload(PNG, "image/png", "frame.png")

    assert caught.value.retry_after == 7


async def test_a_file_the_cdn_cannot_hold_is_permanent(
    uploader: FalUploader, sim: SimulatorHandle
) -> None:
    sim.configure(upload_store_bytes=4096)

    with pytest.raises(PermanentError) as caught:
        await uploader.upload(PNG, "image/png", "frame.png")

    assert caught.value.status_code == 413


@pytest.mark.parametrize(
    ("data", "content_type", "file_name", "says"),
    [
        (PNG, "image/gif", "frame.gif", "image/jpeg, image/png, image/webp"),
        (PNG, "application/octet-stream", "frame.png", "content type"),
        (b"", "image/png", "frame.png", "empty"),
        (b"x" * (MAX_UPLOAD_BYTES + 1), "image/png", "frame.png", str(MAX_UPLOAD_BYTES)),
        (PNG, "image/png", "", "file name"),
        (PNG, "image/png", "../etc/frame.png", "without a path"),
        (PNG, "image/png", "x" * 201, "file name"),
    ],
)
async def test_invalid_uploads_are_refused_before_any_call(
    uploader: FalUploader,
    sim: SimulatorHandle,
    data: bytes,
    content_type: str,
    file_name: str,
    says: str,
) -> None:
    with pytest.raises(InvalidUpload) as caught:
        await uploader.upload(data, content_type, file_name)

    assert says in str(caught.value)
    assert caught.value.error_class is ErrorClass.BAD_REQUEST
    assert not caught.value.retryable
    assert sim.stats(with_logs=False)["calls"] == {}


@pytest.mark.parametrize(
    ("url", "routed"),
    [
        ("https://queue.fal.run/fal-ai/x", "http://127.0.0.1:9/sim/fal-ai/x"),
        (
            "https://rest.fal.ai/storage/auth/token?storage_type=fal-cdn-v3",
            "http://127.0.0.1:9/sim/storage/auth/token?storage_type=fal-cdn-v3",
        ),
        (
            "https://rest.alpha.fal.ai/.well-known/jwks.json",
            "http://127.0.0.1:9/sim/.well-known/jwks.json",
        ),
        ("https://v3.fal.media/files/upload", "http://127.0.0.1:9/sim/files/upload"),
        ("https://v3b.fal.media/files/upload", "http://127.0.0.1:9/sim/files/upload"),
        ("https://example.com/a.png", "https://example.com/a.png"),
        ("https://notfal.ai/x", "https://notfal.ai/x"),
        ("http://127.0.0.1:9/sim/cdn/1/a.png", "http://127.0.0.1:9/sim/cdn/1/a.png"),
    ],
)
def test_routing_rule_sends_every_fal_host_to_a_non_fal_base(url: str, routed: str) -> None:
    assert route_url(url, "http://127.0.0.1:9/sim/") == routed


def test_routing_rule_changes_nothing_when_the_base_is_fal() -> None:
    for url in ("https://rest.fal.ai/storage/auth/token", "https://v3.fal.media/files/upload"):
        assert route_url(url, "https://queue.fal.run") == url
