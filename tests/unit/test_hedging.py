"""Hedged reads (common.resilience.hedging): a second copy of a slow or failed read, the first
decisive answer wins; at most two copies; the hedge delay follows the reads' latency."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from common.resilience import ErrorClass, PermanentError, TransientError
from common.resilience.hedging import Hedge

FLOOR, CEILING = 0.05, 0.5


def hedged(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "orchestrator_provider_hedged_reads_total", {"provider": "test", "reason": reason}
    )
    return value or 0.0


class Reads:
    """A provider read whose copies answer as scripted: (seconds, answer or error), in order."""

    def __init__(self, *script: tuple[float, object]) -> None:
        self.script = list(script)
        self.sent = 0
        self.cancelled = 0

    async def __call__(self) -> object:
        seconds, answer = self.script[self.sent]
        self.sent += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(answer, BaseException):
            raise answer
        return answer


def err(error_class: ErrorClass, status: int | None = None) -> TransientError:
    return TransientError("x", provider="test", error_class=error_class, status_code=status)


def hedge() -> Hedge:
    return Hedge("test", floor=FLOOR, ceiling=CEILING)


async def test_a_prompt_answer_is_read_once() -> None:
    h, before = hedge(), hedged("slow") + hedged("failed")
    reads = Reads((0, "ok"))
    assert await h.read(reads) == "ok"
    assert reads.sent == 1
    assert hedged("slow") + hedged("failed") == before


async def test_a_slow_read_gets_a_second_copy_and_the_first_answer_wins() -> None:
    h, before = hedge(), hedged("slow")
    h._delay = 0.05
    reads = Reads((30, "late"), (0, "second"))
    assert await asyncio.wait_for(h.read(reads), 5) == "second"
    assert reads.sent == 2 and reads.cancelled == 1  # the hung copy is not left running
    assert hedged("slow") == before + 1


async def test_the_slow_copy_still_wins_when_it_answers_first() -> None:
    h = hedge()
    h._delay = 0.05
    reads = Reads((0.1, "first"), (30, "second"))
    assert await asyncio.wait_for(h.read(reads), 5) == "first"
    assert reads.cancelled == 1


@pytest.mark.parametrize(
    "error_class", [ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT, ErrorClass.CONNECTION]
)
async def test_a_read_failing_at_once_is_sent_once_more(error_class: ErrorClass) -> None:
    h, before = hedge(), hedged("failed")
    reads = Reads((0, err(error_class, 503)), (0, "ok"))
    assert await h.read(reads) == "ok"
    assert reads.sent == 2
    assert hedged("failed") == before + 1


async def test_two_failed_copies_raise_the_last_error_and_send_no_third() -> None:
    h = hedge()
    first, second = err(ErrorClass.SERVER_ERROR, 502), err(ErrorClass.SERVER_ERROR, 504)
    reads = Reads((0, first), (0, second), (0, "never"))
    with pytest.raises(TransientError) as caught:
        await h.read(reads)
    assert caught.value is second and reads.sent == 2


@pytest.mark.parametrize(
    "error",
    [
        err(ErrorClass.RATE_LIMITED, 429),  # the provider asked us to wait
        err(ErrorClass.UNPROCESSABLE, 422),  # fal: the generation failed; asking again won't help
        PermanentError("x", provider="test", error_class=ErrorClass.BAD_REQUEST, status_code=400),
    ],
)
async def test_a_decisive_error_is_not_read_again(error: Exception) -> None:
    reads = Reads((0, error), (0, "never"))
    with pytest.raises(type(error)) as caught:
        await hedge().read(reads)
    assert caught.value is error and reads.sent == 1


async def test_an_answer_about_the_request_from_either_copy_ends_the_race() -> None:
    h = hedge()
    h._delay = 0.05
    failed = err(ErrorClass.UNPROCESSABLE, 422)  # fal: the generation failed
    reads = Reads((30, "late"), (0, failed))
    with pytest.raises(TransientError) as caught:
        await asyncio.wait_for(h.read(reads), 5)
    assert caught.value is failed and reads.cancelled == 1


async def test_a_429_of_one_copy_waits_a_little_for_the_other_already_on_its_way() -> None:
    h = hedge()
    h._delay = 0.05
    reads = Reads((0.07, "first"), (0, err(ErrorClass.RATE_LIMITED, 429)))
    assert await asyncio.wait_for(h.read(reads), 5) == "first"


async def test_a_429_beside_a_hung_copy_reaches_the_caller_within_its_call_timeout() -> None:
    h = hedge()
    h._delay = 0.05
    limited = TransientError(
        "x", provider="test", error_class=ErrorClass.RATE_LIMITED, status_code=429, retry_after=3
    )
    reads = Reads((30, "hung"), (0, limited))
    async with asyncio.timeout(1):  # the call's timeout (common.resilience.guard) is outside
        with pytest.raises(TransientError) as caught:
            await h.read(reads)
    await asyncio.sleep(0)  # the hung copy's cancellation runs on the loop's next turn
    assert caught.value is limited and reads.cancelled == 1


async def test_a_failure_with_retry_after_is_not_read_again() -> None:
    busy = TransientError(
        "x", provider="test", error_class=ErrorClass.SERVER_ERROR, status_code=503, retry_after=30
    )
    reads = Reads((0, busy), (0, "never"))
    with pytest.raises(TransientError):
        await hedge().read(reads)
    assert reads.sent == 1


async def test_second_copies_are_a_bounded_share_of_the_reads() -> None:
    h = hedge()
    n = 200
    reads = Reads(*[(0, err(ErrorClass.SERVER_ERROR, 502))] * (2 * n))
    for _ in range(n):
        with pytest.raises(TransientError):
            await h.read(reads)
    # A provider failing every read gets the burst, then one second copy per 4 reads.
    assert n < reads.sent <= n + 10 + n // 4 + 1


async def test_when_both_copies_fail_a_429_is_what_the_caller_sees() -> None:
    h = hedge()
    h._delay = 0.05
    limited = err(ErrorClass.RATE_LIMITED, 429)
    reads = Reads((0.2, err(ErrorClass.SERVER_ERROR, 502)), (0, limited))
    with pytest.raises(TransientError) as caught:
        await asyncio.wait_for(h.read(reads), 5)
    assert caught.value is limited  # its Retry-After is honoured


async def test_a_transient_failure_of_one_copy_waits_for_the_other() -> None:
    h = hedge()
    h._delay = 0.05
    reads = Reads((0.2, "first"), (0, err(ErrorClass.CONNECTION)))
    assert await asyncio.wait_for(h.read(reads), 5) == "first"


async def test_cancelling_the_read_cancels_both_copies() -> None:
    h = hedge()
    h._delay = 0.01
    reads = Reads((30, "a"), (30, "b"))
    reading = asyncio.ensure_future(h.read(reads))
    while reads.sent < 2:
        await asyncio.sleep(0.005)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert reads.cancelled == 2


def test_the_hedge_delay_is_twice_the_p95_of_recent_reads_within_its_bounds() -> None:
    h = hedge()
    assert h.delay == CEILING  # nothing known yet: the longest hedge delay
    h.observe(0.001)
    assert h.delay == CEILING  # one quick read says little: not yet
    for _ in range(100):
        h.observe(0.010)
    assert h.delay == pytest.approx(0.05)  # 2 x 10 ms is below the floor
    for _ in range(200):
        h.observe(0.040)
    assert h.delay == pytest.approx(0.08)
    for _ in range(300):
        h.observe(2.0)
    assert h.delay == CEILING


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="floor"):
        Hedge("test", floor=0, ceiling=1)
    with pytest.raises(ValueError, match="floor"):
        Hedge("test", floor=2, ceiling=1)
