"""What a provider's verified webhook does to the task its URL names.

Each submit hands the provider a URL naming the task and attempt (common.webhook_urls). When the
provider calls back, the request it names is either

* the task's committed request: when the call-back carried a result its kind can read, the
  attempt's success is recorded here and now (the provider signed it; no call, no worker
  step, and the slot goes to the next task in the same commit); otherwise the task is polled
  now, straight to the result, instead of at its next interval. Only a request our own submit
  committed is taken at its word: an adopted one (below) came from a call-back alone, and
  its result is fetched with our key; or
* a request whose submit was cut off: the worker died after the provider accepted it but before
  the request id was committed (the task is still in flight for that attempt, with no request
  id). The task adopts that request (RUNNING with it, like a committed submit) and polls it
  from there, so the segment is paid once. The worker that takes over such a task waits up to
  WEBHOOK_ADOPT_WINDOW for this before it submits again (common.attempts.guards).

Anything else (a finished task, another attempt, an unknown request) is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum

from common import metrics
from common.attempts.kind import ReadReported, Reported, budget_name
from common.attempts.outcomes import record_success, release_dependents, succeeded
from common.committer import GroupCommitter
from common.domain.changes import StaleTask
from common.domain.messages import MessageKind, Send, TaskMessage
from common.domain.records import TaskRecord
from common.domain.states import TaskStatus
from common.logs import bind_task
from common.store import queries
from common.webhook_urls import WebhookTarget

log = logging.getLogger(__name__)
# Commits of a reported result tried before leaving it to the worker's poll.
RECORD_TRIES = 3


class Verdict(StrEnum):
    FINISHED = "finished"  # the task's request, its result carried: recorded
    ACCEPTED = "accepted"  # the task's request: polled now
    ADOPTED = "adopted"  # an interrupted submit's request: adopted, then fetched
    IGNORED = "ignored"


async def on_webhook(
    committer: GroupCommitter,
    target: WebhookTarget,
    request_id: str,
    *,
    result: str = "",
    readers: Mapping[str, ReadReported] | None = None,
) -> Verdict:
    """Act on a verified webhook for `target` saying `request_id` finished; `result`: the
    result it carried, as JSON ("" if none), read by `readers[kind]` if the kind has one."""
    # The task the signed URL names, read with the other webhooks of the moment in one query
    # (the committer's task loader); the usual case, its committed request, needs no more.
    named = await committer.tasks.load(target.task_id)
    if named is not None and named.request_id == request_id:
        if named.status != TaskStatus.RUNNING:
            return Verdict.IGNORED
        read = (readers or {}).get(named.kind)
        # An adopted request has no handle (`_adopt`): one without is never taken at its word.
        ours = named.attempt == target.attempt and bool(named.handle)
        reported = read(named, result) if read is not None and result and ours else None
        if reported is None:
            await committer.send_now(Send(_fetch(named), named.kind, named.priority))
            return Verdict.ACCEPTED
        return await _record(committer, named, reported)
    async with committer.db.read() as session:
        task = await queries.task_by_request_id(session, request_id)
    if task is not None:  # another task's request (or another attempt's): not ours to act on
        return Verdict.IGNORED
    task = named  # adopting commits only if the task is still as read here
    if task is None or not _orphaned(committer, task, target):
        return Verdict.IGNORED
    try:
        await _adopt(committer, task, request_id)
    except StaleTask:  # the worker committed (or gave up on) the submit meanwhile
        return Verdict.IGNORED
    return Verdict.ADOPTED


def _orphaned(committer: GroupCommitter, task: TaskRecord, target: WebhookTarget) -> bool:
    """The named attempt is mid-submit with no request id committed."""
    spec = committer.kinds[task.kind]
    return (
        spec.polled
        and task.status == spec.in_flight_status
        and task.attempt == target.attempt
        and task.request_id is None
    )


async def _adopt(committer: GroupCommitter, task: TaskRecord, request_id: str) -> None:
    spec = committer.kinds[task.kind]
    async with committer.transaction() as cs:
        cs.change(
            task,
            TaskStatus.RUNNING,
            message=(
                f"adopted {spec.provider} request {request_id}: its webhook named attempt"
                f" {task.attempt}, whose submit was cut off before the id was recorded"
            ),
            details={"request_id": request_id, "adopted": True},
            request_id=request_id,
            handle={},
            poll_chain=task.poll_chain + 1,
            deadline_at=cs.now + cs.timings.stale_after,
        )
        # A regular poll chain (the first poll at once): the task had none.
        poll = TaskMessage(
            task.id, task.job_id, MessageKind.POLL, task.attempt, chain=task.poll_chain + 1
        )
        cs.send(task, poll)
    metrics.adopted_requests.labels(spec.name).inc()
    log.warning(
        "adopted %s request %s of task %d attempt %d from its webhook",
        spec.provider,
        request_id,
        task.id,
        task.attempt,
        extra={"event": "adopted", "request_id": request_id},
    )


async def _record(committer: GroupCommitter, task: TaskRecord, reported: Reported) -> Verdict:
    """The success the call-back reported, as the worker's poll would have recorded it.

    If the task moved between the read and the commit but still runs that request (a worker
    handed its slot on after a refused result fetch, say), it is recorded on a fresh read;
    IGNORED when the request is no longer running (a poll recorded it first, a cancel)."""
    spec = committer.kinds[task.kind]
    bind_task(task.job_id, task.index, task.attempt)
    budget = budget_name(spec.provider, reported.model)
    for _ in range(RECORD_TRIES):
        try:
            async with committer.transaction() as cs:
                record_success(cs, task, reported.outcome, budget=budget)
                release_dependents(cs, committer.kinds, task)
        except StaleTask:
            fresh = await committer.tasks.load(task.id)
            if fresh is None or not _same_request(fresh, task):
                return Verdict.IGNORED
            task = fresh
            continue
        succeeded(spec.name, reported.outcome)
        return Verdict.FINISHED
    # Moving under us every time: the worker fetches the result.
    await committer.send_now(Send(_fetch(task), task.kind, task.priority))
    return Verdict.ACCEPTED


def _same_request(fresh: TaskRecord, read: TaskRecord) -> bool:
    return (fresh.status, fresh.attempt, fresh.request_id) == (
        TaskStatus.RUNNING,
        read.attempt,
        read.request_id,
    )


def _fetch(task: TaskRecord) -> TaskMessage:
    """A one-off poll that goes straight to the result (the provider said it finished)."""
    return TaskMessage(task.id, task.job_id, MessageKind.POLL, task.attempt, once=True)
