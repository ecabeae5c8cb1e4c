"""The fal adapter: the real fal_client against the simulator, hidden retries off."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import fal_client.client
import pytest

from common.resilience import ErrorClass, PermanentError, TransientError
from services.simulator.app import SimulatorHandle
from services.video_worker.fal_adapter import FalVideoProvider
from services.video_worker.ports import GenerationFailed, Phase, Progress, ProviderRequest, Video
from tests.support.stack import FAL_KEY

MODEL = "fal-ai/kling-video/v1/standard/image-to-video"
ARGS = {"prompt": "a duel", "image_url": "https://example.com/a.png"}


@pytest.fixture
async def fal(sim: SimulatorHandle) -> AsyncIterator[FalVideoProvider]:
    async with FalVideoProvider(
        key=FAL_KEY, queue_url=sim.url, timeout=1.0, secrets=[FAL_KEY]
    ) as p:
        yield p


async def test_submit_status_result_round_trip(fal: FalVideoProvider, sim: SimulatorHandle) -> None:
    sim.configure(latency=0)
    request = await fal.submit(MODEL, ARGS)
    # The simulator saw its own host, not fal's; the URLs are the adapter's opaque handle.
    assert str(request.handle["status_url"]).startswith(sim.url)
    progress = await fal.status(request)
    assert progress.phase is Phase.COMPLETED
    video = await fal.result(request)
    assert video.url.endswith(f"{request.request_id}.mp4")
    assert await fal.cancel(request) is False  # already completed


async def test_a_request_known_only_by_its_id_and_model_is_found(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    # An adopted request (its submit's answer was lost; a webhook named it) has no URLs.
    sim.configure(latency=0)
    submitted = await fal.submit(MODEL, ARGS)
    adopted = ProviderRequest(submitted.request_id, {"model": MODEL})
    assert (await fal.status(adopted)).phase is Phase.COMPLETED
    video = await fal.result(adopted)
    assert isinstance(video, Video) and video.url.endswith(f"{submitted.request_id}.mp4")
    assert await fal.cancel(adopted) is False


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        ("429", ErrorClass.RATE_LIMITED),
        ("503", ErrorClass.SERVER_ERROR),
        ("409", ErrorClass.SERVER_ERROR),
        ("reset", ErrorClass.CONNECTION),
        ("timeout", ErrorClass.TIMEOUT),
    ],
)
async def test_transient_failures_are_raised_once_not_retried_inside_fal_client(
    fal: FalVideoProvider, sim: SimulatorHandle, fault: str, error_class: ErrorClass
) -> None:
    # fal-client alone would retry each of these up to 10 times.
    sim.configure(rules=[{"endpoint": "submit", "match": "duel", "fault": fault}], hang_seconds=3)
    with pytest.raises(TransientError) as caught:
        await fal.submit(MODEL, ARGS)
    assert caught.value.error_class is error_class
    assert sim.stats(with_logs=False)["submits_total"] == 1
    assert FAL_KEY not in str(caught.value)


async def test_ingress_style_502_is_not_retried_either(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    sim.configure(faults=[{"endpoints": ["submit"], "rates": {"502": 1.0}, "ingress": True}])
    with pytest.raises(TransientError):
        await fal.submit(MODEL, ARGS)
    assert sim.stats(with_logs=False)["submits_total"] == 1


async def test_retry_after_is_carried_and_bad_request_is_permanent(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    sim.configure(
        rules=[{"endpoint": "submit", "match": "duel", "fault": "429", "times": 1}],
        faults=[{"endpoints": ["status"], "rates": {"429": 1.0}, "retry_after": 3}],
    )
    with pytest.raises(TransientError) as rate_limited:
        await fal.submit(MODEL, ARGS)
    assert rate_limited.value.status_code == 429
    request = await fal.submit(MODEL, ARGS)
    with pytest.raises(TransientError) as status_limited:
        await fal.status(request)
    assert status_limited.value.retry_after == 3
    sim.configure(faults=[], rules=[{"endpoint": "submit", "match": "duel", "fault": "400"}])
    with pytest.raises(PermanentError) as bad:
        await fal.submit(MODEL, ARGS)
    assert bad.value.error_class is ErrorClass.BAD_REQUEST


async def test_a_result_asked_for_too_early_is_progress_not_an_error(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    # fal answers 400 "still in progress" (e.g. a webhook that came before the request ended).
    sim.configure(latency=30)
    request = await fal.submit(MODEL, ARGS)
    early = await fal.result(request)
    assert isinstance(early, Progress) and early.phase is Phase.IN_PROGRESS


async def test_failed_generation_result_is_unprocessable(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    sim.configure(
        latency=0, rules=[{"endpoint": "submit", "match": "duel", "fault": "generation_failed"}]
    )
    request = await fal.submit(MODEL, ARGS)
    assert (await fal.status(request)).phase is Phase.COMPLETED
    with pytest.raises(GenerationFailed) as caught:  # a failed attempt, not a failed call
        await fal.result(request)
    assert caught.value.error_class is ErrorClass.UNPROCESSABLE


async def test_wrong_key_is_an_auth_error(sim: SimulatorHandle) -> None:
    async with FalVideoProvider(
        key="wrong", queue_url=sim.url, timeout=1.0, secrets=["wrong"]
    ) as p:
        with pytest.raises(PermanentError) as caught:
            await p.submit(MODEL, ARGS)
    assert caught.value.error_class is ErrorClass.AUTH
    assert "wrong" not in str(caught.value)


async def test_status_and_result_are_direct_gets_with_the_key_not_fal_client_calls(
    fal: FalVideoProvider, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls are most of a segment's calls: they go straight on the transport (no fal-client
    # handle, no httpx request per poll), still authenticated and routed the same way.
    sim.configure(latency=0)
    submitted = await fal.submit(MODEL, ARGS)

    async def no_fal_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("a status check or result fetch went through fal-client")

    monkeypatch.setattr(fal_client.client, "_async_maybe_retry_request", no_fal_client)
    for request in (submitted, ProviderRequest(submitted.request_id, {"model": MODEL})):
        assert (await fal.status(request)).phase is Phase.COMPLETED
        assert isinstance(await fal.result(request), Video)
    async with FalVideoProvider(
        key="wrong", queue_url=sim.url, timeout=1.0, secrets=["wrong"]
    ) as stranger:
        with pytest.raises(PermanentError) as caught:
            await stranger.status(submitted)
    assert caught.value.error_class is ErrorClass.AUTH


async def test_a_malformed_status_answer_is_a_transient_failure(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    sim.configure(latency=0)
    submitted = await fal.submit(MODEL, ARGS)
    broken = ProviderRequest(
        submitted.request_id, {**submitted.handle, "status_url": submitted.handle["response_url"]}
    )
    with pytest.raises(TransientError) as caught:  # a result body has no "status"
        await fal.status(broken)
    assert caught.value.error_class is ErrorClass.SERVER_ERROR


async def test_a_hung_or_failed_read_is_answered_by_its_second_copy(
    fal: FalVideoProvider, sim: SimulatorHandle
) -> None:
    # The status check hangs past the call's timeout (1 s): its second copy, sent after the
    # hedge delay (half the timeout while no latency is known), answers in time.
    sim.configure(
        latency=0,
        hang_seconds=3,
        rules=[
            {"endpoint": "status", "match": "duel", "fault": "timeout", "times": 1},
            {"endpoint": "result", "match": "duel", "fault": "503", "times": 1},
        ],
    )
    request = await fal.submit(MODEL, ARGS)
    started = time.perf_counter()
    assert (await fal.status(request)).phase is Phase.COMPLETED
    assert time.perf_counter() - started < 0.9
    assert isinstance(await fal.result(request), Video)  # the 503 is read over at once
    calls = sim.stats(with_logs=False)["calls"]
    assert (calls["status"], calls["result"]) == (2, 2)


async def test_submits_and_unhedged_reads_are_sent_once(sim: SimulatorHandle) -> None:
    sim.configure(
        latency=0,
        rules=[
            {"endpoint": "submit", "match": "duel", "fault": "503", "times": 1},
            {"endpoint": "status", "match": "duel", "fault": "503", "times": 1},
        ],
    )
    async with FalVideoProvider(
        key=FAL_KEY, queue_url=sim.url, timeout=1.0, secrets=[FAL_KEY], hedged_reads=False
    ) as fal:
        with pytest.raises(TransientError):  # a submit may be paid for: never sent twice
            await fal.submit(MODEL, ARGS)
        request = await fal.submit(MODEL, ARGS)
        with pytest.raises(TransientError):  # FAL_HEDGED_READS=false
            await fal.status(request)
    calls = sim.stats(with_logs=False)["calls"]
    assert (calls["submit"], calls["status"]) == (2, 1)
