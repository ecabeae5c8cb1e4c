"""The lifecycle contract: what every task kind does, run for every registered kind.

Each scenario drives a kind through the real store, committer, broker dispatcher and attempt
runner, with a fake provider at the kind's port (tests/support/fakes.py): so the rules are the
runner's, checked the same way for video segments, story plans and sets, and a toy kind defined
only in tests/support.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.attempts.kind import Reported, Succeeded
from common.attempts.options import AttemptOptions
from common.attempts.webhooks import Verdict, on_webhook
from common.domain.changes import StaleTask
from common.domain.events import EventType
from common.domain.records import TaskRecord
from common.domain.states import JobStatus
from common.webhook_urls import WebhookTarget
from tests.lifecycle.cases import CASES
from tests.support.lifecycle import KindCase, Lifecycle, lifecycle, run_message
from tests.support.toy_kind import EchoProvider

each_kind = pytest.mark.parametrize("case", CASES, ids=str)
polled_kinds = pytest.mark.parametrize("case", [c for c in CASES if c.spec.polled], ids=str)


async def _gapless(h: Lifecycle, job_id: str) -> None:
    cursors = [e.seq for e in await h.events(job_id)]
    assert cursors == list(range(1, len(cursors) + 1))


def _in_flight(case: KindCase, task: TaskRecord) -> bool:
    return task.status == case.spec.in_flight_status


@each_kind
async def test_success(tmp_path: Path, case: KindCase) -> None:
    async with lifecycle(tmp_path, case) as h:
        job_id = await h.start_job(3)
        job = await h.finished(job_id)
        tasks = await h.tasks(job_id)
        assert job.status == JobStatus.COMPLETED
        assert [(t.status, t.attempt) for t in tasks] == [("succeeded", 1)] * 3
        assert all(t.result for t in tasks)
        assert h.fake.paid == 3
        await _gapless(h, job_id)


@each_kind
@pytest.mark.parametrize("failure", ["transient", "rate_limited"])
async def test_a_transient_failure_is_retried_with_backoff(
    tmp_path: Path, case: KindCase, failure: str
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.script.add(failure)
        job_id = await h.start_job(1)
        job = await h.finished(job_id)
        (task,) = await h.tasks(job_id)
        assert job.status == JobStatus.COMPLETED
        assert (task.status, task.attempt) == ("succeeded", 2)
        (retrying,) = [e for e in await h.events(job_id) if e.task_status == "retrying"]
        delay = retrying.details["retry_in"]
        if failure == "rate_limited":  # Retry-After 0.01 s stretches the jittered delay
            assert delay >= 0.01
        assert 0 <= delay <= 0.05  # full jitter under the cap (or the capped Retry-After)
        assert h.fake.paid == 2


@each_kind
async def test_a_permanent_failure_fails_the_task_not_the_job(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.script.add("permanent")
        job_id = await h.start_job(2)
        job = await h.finished(job_id)
        first, second = await h.tasks(job_id)
        assert (first.status, first.error_class, first.recoverable) == (
            "failed",
            "bad_request",
            False,
        )
        assert first.attempt == 1  # a permanent error is not retried
        assert second.status == "succeeded"
        assert job.status == JobStatus.PARTIALLY_FAILED


@each_kind
async def test_while_the_circuit_is_open_work_is_deferred_without_spending_an_attempt(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case, breaker_consecutive_failures=1) as h:
        h.fake.script.add("transient")  # the first call fails: the circuit opens
        job_id = await h.start_job(2)
        job = await h.finished(job_id)
        first, second = await h.tasks(job_id)
        events = await h.events(job_id)
        deferred = [e for e in events if e.type == EventType.TASK_DEFERRED]
        assert {e.task_index for e in deferred} >= {second.index}
        assert any(e.type == EventType.BREAKER and e.details["state"] == "open" for e in events)
        assert job.status == JobStatus.COMPLETED
        assert (first.attempt, second.attempt) == (2, 1)  # deferrals spent no attempt
        assert h.fake.paid == 3


@each_kind
async def test_every_message_handled_twice_changes_nothing(tmp_path: Path, case: KindCase) -> None:
    async with lifecycle(tmp_path, case, duplicates=True) as h:
        job_id = await h.start_job(3)
        job = await h.finished(job_id)
        assert job.status == JobStatus.COMPLETED
        assert [(t.status, t.attempt) for t in await h.tasks(job_id)] == [("succeeded", 1)] * 3
        assert h.fake.paid == 3  # no duplicate reached the provider
        # A message for an attempt that is over is dropped as well.
        (task, *_) = await h.tasks(job_id)
        await h.send(task, run_message(task))
        await h.send(task, run_message(task, reissued=True))
        assert h.fake.paid == 3
        await _gapless(h, job_id)


@each_kind
async def test_a_call_under_way_is_not_started_again_by_a_second_delivery(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.script.hold()
        job_id = await h.start_job(1)
        await h.fake.script.entered.wait()
        (task,) = await h.tasks(job_id)
        assert _in_flight(case, task)
        await h.send(task, run_message(task))  # a copy, as after a channel hiccup
        h.fake.script.release()
        assert (await h.finished(job_id)).status == JobStatus.COMPLETED
        assert h.fake.paid == 1


@each_kind
async def test_a_call_lost_with_its_worker_is_reported_and_made_again(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        # The job is recorded but not published: this test plays the dead worker itself.
        (task,) = await h.record_only(1, "lost")
        task = await h.mid_call(task, worker="dead", deadline=time.time() - 1)
        assert _in_flight(case, task)  # ...and then its worker died mid-call
        await h.send(task, run_message(task, reissued=True))  # the sweeper's re-issue
        finished = await h.finished("lost")
        assert finished.status == JobStatus.COMPLETED
        (task,) = await h.tasks("lost")
        assert (task.status, task.attempt) == ("succeeded", 1)
        texts = [e.message for e in await h.events("lost")]
        assert any("lost" in t or "stopped mid" in t for t in texts), texts
        assert h.fake.paid == 1


@each_kind
async def test_retry_failed_reruns_what_failed_and_completes_the_job(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.script.add("permanent")
        job_id = await h.start_job(2)
        await h.finished(job_id)
        failed = [t.index for t in await h.tasks(job_id) if t.status == "failed"]
        assert await h.retry_failed(job_id) == failed
        assert (await h.job(job_id)).status == JobStatus.RUNNING
        job = await h.finished(job_id)
        assert job.status == JobStatus.COMPLETED
        retried = [t for t in await h.tasks(job_id) if t.index in failed]
        assert [(t.status, t.attempt) for t in retried] == [("succeeded", 2)]
        assert job.retry_history[0]["tasks"] == failed
        assert h.fake.paid == 3
        await _gapless(h, job_id)


@each_kind
async def test_cancel_during_the_call_cancels_the_task_and_any_request_it_made(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.script.hold()
        job_id = await h.start_job(1)
        await h.fake.script.entered.wait()
        await h.cancel(job_id)
        h.fake.script.release()
        job = await h.finished(job_id)
        assert job.status == JobStatus.CANCELLED
        assert [t.status for t in await h.tasks(job_id)] == ["cancelled"]
        if case.spec.polled:  # the request the provider took is not left running there

            async def cancelled_at_provider() -> bool:
                return bool(h.fake.cancelled)

            await h.until(cancelled_at_provider)
        assert h.fake.paid == 1


@polled_kinds
async def test_cancel_of_a_running_request_reaches_the_provider(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        h.fake.polls = 1_000_000  # the provider never finishes
        job_id = await h.start_job(1)
        (running,) = await h.in_status(job_id, "running")
        await h.cancel(job_id)

        async def acknowledged() -> bool:
            return any("cancellation requested" in e.message for e in await h.events(job_id))

        await h.until(acknowledged)
        assert h.fake.cancelled == [running.request_id]
        assert (await h.job(job_id)).status == JobStatus.CANCELLED


@each_kind
async def test_a_redelivered_call_whose_worker_is_dead_is_taken_over_at_once(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        (task,) = await h.record_only(1, "dead")
        # Mid-call, well within its deadline, but its worker's lease ran out: it died.
        task = await h.mid_call(task, worker="dead-worker", deadline=time.time() + 600)
        await h.lease("dead-worker", until=time.time() - 1)
        assert h.runner is not None
        await h.runner.handle(run_message(task), redelivered=True)  # RabbitMQ's redelivery
        job = await h.finished("dead")
        assert job.status == JobStatus.COMPLETED
        assert h.fake.paid == 1
        texts = [e.message for e in await h.events("dead")]
        assert any("lost" in t or "stopped mid" in t for t in texts), texts


@each_kind
async def test_a_redelivered_call_whose_worker_is_alive_is_left_to_it(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        (task,) = await h.record_only(1, "alive")
        task = await h.mid_call(task, worker="busy-worker", deadline=time.time() + 600)
        await h.lease("busy-worker", until=time.time() + 1.0)
        assert h.runner is not None
        started = time.monotonic()
        await h.runner.handle(run_message(task), redelivered=True)
        # Not run while the lease holds; looked at again once it would have run out, and then
        # (nobody renewed it: the worker is gone after all) taken over.
        assert h.fake.paid == 0
        job = await h.finished("alive")
        assert job.status == JobStatus.COMPLETED and h.fake.paid == 1
        assert time.monotonic() - started >= 1.0


@each_kind
async def test_a_plain_duplicate_of_a_call_under_way_is_dropped_whatever_the_lease(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case) as h:
        (task,) = await h.record_only(1, "dup")
        task = await h.mid_call(task, worker="gone-worker", deadline=time.time() + 600)
        assert h.runner is not None
        with pytest.raises(StaleTask):  # not redelivered: a copy, e.g. a publisher's retry
            await h.runner.handle(run_message(task), redelivered=False)
        assert h.fake.paid == 0


# An interrupted submit, with webhooks ---------------------------------------------------------

ADOPTING = AttemptOptions(call_timeout=2.0, poll_interval=0.01, adopt_window=30.0)


async def _orphan(h: Lifecycle, task: TaskRecord) -> str:
    """A request the provider accepted for `task`, whose id its (dead) worker never recorded."""
    if isinstance(h.fake, EchoProvider):
        return await h.fake.send(str(task.payload["text"]))
    request = await h.fake.submit(task.payload["model"], task.payload["arguments"])
    return str(request.request_id)


@polled_kinds
async def test_an_interrupted_submit_waits_for_the_webhook_and_adopts_its_request(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case, options=ADOPTING) as h:
        (task,) = await h.record_only(1, "orphan")
        task = await h.mid_call(task, worker="dead", deadline=time.time() - 1)
        request_id = await _orphan(h, task)  # paid: accepted before the worker died
        await h.send(task, run_message(task, reissued=True))  # the sweeper's re-issue

        async def waiting() -> bool:
            return any("webhook to name" in e.message for e in await h.events("orphan"))

        await h.until(waiting)
        target = WebhookTarget(task.id, task.attempt)
        earlier = WebhookTarget(task.id, task.attempt - 1)  # an older attempt's URL
        assert await on_webhook(h.committer, earlier, request_id) is Verdict.IGNORED
        assert await on_webhook(h.committer, target, request_id) is Verdict.ADOPTED
        assert (await h.finished("orphan")).status == JobStatus.COMPLETED
        (done,) = await h.tasks("orphan")
        assert (done.status, done.request_id, done.attempt) == ("succeeded", request_id, 1)
        assert h.fake.paid == 1  # nothing submitted again
        texts = [e.message for e in await h.events("orphan")]
        assert any(f"adopted {case.spec.provider} request {request_id}" in t for t in texts)
        # A late copy of the webhook finds the request already the task's: nothing more.
        assert await on_webhook(h.committer, target, request_id) is Verdict.IGNORED


@polled_kinds
async def test_a_webhook_naming_another_tasks_request_adopts_nothing(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case, options=ADOPTING) as h:
        job = await h.start_job(1)
        assert (await h.finished(job)).status == JobStatus.COMPLETED
        (done,) = await h.tasks(job)
        assert done.request_id
        (task,) = await h.record_only(1, "orphan")
        task = await h.mid_call(task, worker="dead", deadline=time.time() + 60)
        # The orphan's own (signed) URL, but a request another task committed: not its own.
        target = WebhookTarget(task.id, task.attempt)
        assert await on_webhook(h.committer, target, done.request_id) is Verdict.IGNORED
        (still,) = await h.tasks("orphan")
        assert still.request_id is None and still.status == task.status


@polled_kinds
async def test_an_interrupted_submit_no_webhook_names_is_made_again_after_the_window(
    tmp_path: Path, case: KindCase
) -> None:
    # The window is measured from the cut-off start: 3 s leaves the RUN 2.5 s (past
    # ADOPT_EARLY) to arrive on a loaded CI machine (with 1 s it once came too late to wait).
    options = AttemptOptions(call_timeout=2.0, poll_interval=0.01, adopt_window=3.0)
    async with lifecycle(tmp_path, case, options=options) as h:
        (task,) = await h.record_only(1, "never")
        task = await h.mid_call(task, worker="dead", deadline=time.time() - 1)
        await h.send(task, run_message(task, reissued=True))
        assert (await h.finished("never")).status == JobStatus.COMPLETED
        assert h.fake.paid == 1
        texts = [e.message for e in await h.events("never")]
        waited = next(i for i, t in enumerate(texts) if "webhook to name" in t)
        again = next(i for i, t in enumerate(texts) if "was lost" in t)
        assert waited < again, texts


# Polls a minute apart: only a webhook finishes these tasks within a test.
WEBHOOKS_ONLY = AttemptOptions(call_timeout=2.0, poll_interval=60.0, first_poll_delay=60.0)


def _reader(_task: TaskRecord, result: str) -> Reported | None:
    """A kind's reading of a carried result: usable when it says "ok"."""
    data = json.loads(result)
    return Reported(Succeeded(data, "reported by the call-back"), "model") if "ok" in data else None


READERS = {c.spec.name: _reader for c in CASES}


def _target(task: TaskRecord) -> WebhookTarget:
    return WebhookTarget(task.id, task.attempt)


async def _call_back(
    h: Lifecycle, task: TaskRecord, result: str, request_id: str | None = None
) -> Verdict:
    """The provider calls back for `task` (its committed request by default) with `result`."""
    if request_id is None:
        request_id = task.request_id or ""
    return await on_webhook(h.committer, _target(task), request_id, result=result, readers=READERS)


async def _running(h: Lifecycle, job_id: str, n: int = 1) -> list[TaskRecord]:
    async def started() -> bool:
        return sum(t.status == "running" for t in await h.tasks(job_id)) >= n

    await h.until(started)
    return [t for t in await h.tasks(job_id) if t.status == "running"]


@polled_kinds
async def test_a_webhook_carrying_the_result_records_it_and_hands_the_slot_on(
    tmp_path: Path, case: KindCase
) -> None:
    one_slot = {f"{case.spec.slot_pool}_concurrency": 1}
    async with lifecycle(tmp_path, case, options=WEBHOOKS_ONLY, **one_slot) as h:
        job_id = await h.start_job(2)
        for _ in range(2):
            (task,) = await _running(h, job_id)  # the other waits for the one slot
            verdict = await _call_back(h, task, '{"ok": 1}')
            assert verdict is Verdict.FINISHED
            # A late copy finds the request finished: nothing more.
            late = await _call_back(h, task, '{"ok": 1}')
            assert late is Verdict.IGNORED
        assert (await h.finished(job_id)).status == JobStatus.COMPLETED
        assert [t.result for t in await h.tasks(job_id)] == [{"ok": 1}] * 2
        assert h.fake.paid == 2
        await _gapless(h, job_id)


@polled_kinds
async def test_a_webhook_result_is_recorded_on_a_fresh_read_when_the_task_moved_meanwhile(
    tmp_path: Path, case: KindCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lifecycle(tmp_path, case, options=WEBHOOKS_ONLY) as h:
        job_id = await h.start_job(1)
        (task,) = await _running(h, job_id)
        # The first read is one from before the worker handed the slot on (a refused result
        # fetch does that): the commit on it is stale, the fresh read still runs the request.
        loads = h.committer.tasks.load
        stale = replace(task, holds_slot=not task.holds_slot)
        reads = iter([stale])
        monkeypatch.setattr(h.committer.tasks, "load", lambda i: _first(reads, loads, i))
        verdict = await _call_back(h, task, '{"ok": 1}')
        assert verdict is Verdict.FINISHED
        assert (await h.finished(job_id)).status == JobStatus.COMPLETED


async def _first(
    reads: Iterator[TaskRecord], load: Callable[[int], Awaitable[TaskRecord | None]], task_id: int
) -> TaskRecord | None:
    return next(reads, None) or await load(task_id)


@polled_kinds
async def test_a_webhook_without_a_usable_result_has_it_fetched(
    tmp_path: Path, case: KindCase
) -> None:
    async with lifecycle(tmp_path, case, options=WEBHOOKS_ONLY) as h:
        job_id = await h.start_job(1)
        (task,) = await _running(h, job_id)
        verdict = await _call_back(h, task, '{"no": 1}')
        assert verdict is Verdict.ACCEPTED  # a one-off poll asks the provider itself
        (still,) = await h.tasks(job_id)
        assert still.result != {"no": 1}


@polled_kinds
async def test_an_adopted_requests_carried_result_is_not_taken_at_its_word(
    tmp_path: Path, case: KindCase
) -> None:
    # An adopted request id came from a call-back alone: its result is fetched with our key.
    # (Polls a minute apart: the adopted request is still running when the result comes.)
    options = replace(ADOPTING, poll_interval=60.0)
    async with lifecycle(tmp_path, case, options=options) as h:
        (task,) = await h.record_only(1, "orphan")
        task = await h.mid_call(task, worker="dead", deadline=time.time() + 60)
        request_id = await _orphan(h, task)
        assert await on_webhook(h.committer, _target(task), request_id) is Verdict.ADOPTED
        verdict = await _call_back(h, task, '{"ok": 1}', request_id)
        assert verdict is not Verdict.FINISHED
        assert (await h.finished("orphan")).status == JobStatus.COMPLETED
        (done,) = await h.tasks("orphan")
        assert done.result != {"ok": 1}
