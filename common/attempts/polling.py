"""POLL steps: ask the provider about a submitted request and reschedule the check (through
RabbitMQ's delay tiers) until it is done; a poll triggered by a webhook goes straight to the
result. A request the provider finished whose result could not be fetched gives its provider
slot to the next task at once; its result is fetched later."""

from __future__ import annotations

import logging
from dataclasses import replace

from common.attempts.kind import Pending, RequestFailed, ResultDelayed, Succeeded, Work
from common.attempts.outcomes import Outcomes
from common.attempts.steps import progress
from common.domain.changes import StaleTask
from common.domain.events import EventDraft
from common.domain.messages import Send
from common.domain.states import TaskStatus
from common.resilience import CircuitOpenError, ProviderError

log = logging.getLogger(__name__)
# What a poll saw of a request the provider finished but whose result is still to be fetched.
FINISHED = "finished"


class Polling(Outcomes):
    """Status checks of a polled kind's request."""

    async def poll(self) -> None:
        task, message = self.task, self.message
        if task.status != TaskStatus.RUNNING:
            raise StaleTask(f"task is {task.status}")
        if not message.once and message.chain != task.poll_chain:
            raise StaleTask(f"poll chain {message.chain} replaced by {task.poll_chain}")
        await self._poll_work(await self._work(task))

    async def _check(self, work: Work) -> Pending | Succeeded | RequestFailed | ResultDelayed:
        """The kind's check, its provider calls tallied for the shared budget."""
        calls = self._calls()
        try:
            # A webhook's poll, or one after a refused fetch of a finished request's result,
            # goes straight to the result.
            notified = self.message.once or self.message.seen == FINISHED
            return await self.handler.check(work, calls, notified=notified)
        finally:
            self.runner.tally.add(self._budget(work), calls.made)

    async def _poll_work(self, work: Work) -> None:
        message = self.message
        try:
            outcome = await self._check(work)
        except CircuitOpenError as exc:
            if not message.once:
                await self._repoll(seen=message.seen, delay=exc.retry_in)
            log.info("status check put off: circuit open", extra={"event": "wait"})
            return
        except ProviderError as exc:
            if exc.retryable:
                # The status call failed, not the request: check again later (after its
                # Retry-After). A 429 here does not pause starts: submits have their own 429s,
                # and a pause per refused status check stalls every start under random 429s.
                log.info(
                    "status check failed (%s); checking again later",
                    exc.error_class,
                    extra={"event": "status_check", "error": exc.message},
                )
                if not message.once:
                    delay = max(self.options.poll_interval, exc.retry_after or 0.0)
                    await self._repoll(seen=message.seen, delay=delay)
                return
            await self._failed(work, exc)
            return
        if isinstance(outcome, ResultDelayed):
            await self._result_delayed(outcome.error)
            return
        log.info(
            "status of request %s: %s",
            work.task.request_id,
            outcome.text if isinstance(outcome, Pending) else "done",
            extra={"event": "status_check", "request_id": work.task.request_id},
        )
        if isinstance(outcome, Pending):
            if not message.once:
                await self._repoll(seen=outcome.seen, text=outcome.text)
        elif isinstance(outcome, RequestFailed):
            await self._failed(work, outcome.error)
        else:
            await self._succeeded(work, outcome)

    async def _result_delayed(self, error: ProviderError) -> None:
        """The provider finished the request, but its result could not be fetched: the slot
        it held there goes to the next task now (the fetch may wait seconds for a Retry-After,
        the provider runs nothing for it meanwhile), and the result is fetched again after
        the error's Retry-After (capped), at least a poll interval or the first backoff step,
        whichever is shorter: a webhook's fetch too, not at the fallback poll minutes later.

        The fetch goes on in a new poll chain, which retires the task's others: a webhook's
        one-off poll, repeated webhooks and the regular chain would otherwise each keep
        fetching, together more often than the Retry-After allows."""
        task = self.task
        floor = min(self.options.poll_interval, self.policy.backoff.ceiling(1))
        delay = max(floor, min(error.retry_after or 0.0, self.options.max_pause))
        log.info(
            "%s finished request %s, but fetching its result failed (%s); fetching again in %.1fs",
            self.spec.provider,
            task.request_id,
            error.error_class,
            delay,
            extra={"event": "status_check", "error": error.message, "retry_in": round(delay, 3)},
        )
        async with self.committer.transaction() as cs:
            text = f"{self.spec.provider} finished the request; its result is fetched again later"
            cs.note(
                task,
                progress(task, text, provider_status=FINISHED) if task.holds_slot else None,
                release_slot=True,
                poll_chain=task.poll_chain + 1,
                deadline_at=cs.now + delay + cs.timings.stale_after,
            )
            again = replace(
                self._poll_message(task.poll_chain + 1), seen=FINISHED, due=cs.now + delay
            )
            cs.send(task, again, delay=delay)

    async def _repoll(self, *, seen: str, delay: float | None = None, text: str = "") -> None:
        """Schedule the next poll; write only when there is news or the deadline runs short.

        A regular next check (no `delay` imposed) is due a poll interval after this one was
        due, so the time each check spends in the broker and here does not push every later
        check back; one that is already more than an interval late starts a new rhythm now."""
        task, message = self.task, self.message
        now = self.committer.clock()
        wait = self.options.poll_interval if delay is None else delay
        # Pulled in by this check's lateness to keep the rhythm, the next one may still come a
        # plain interval from now where a delay tier that long saves hops (slack).
        slack = 0.0
        if delay is None and message.due and now < message.due + wait:
            slack = max(0.0, now - message.due)
            wait = message.due + wait - now
        news = seen != message.seen
        latest = wait + slack
        short = (task.deadline_at or 0.0) < now + latest + self.committer.timings.stale_after / 2
        next_poll = replace(self._poll_message(task.poll_chain), seen=seen, due=now + wait)
        if not news and not short and not self.committer.hooks_pending:
            send = Send(next_poll, task.kind, task.priority, delay=wait, slack=slack)
            await self.committer.send_now(send)
            return
        event: EventDraft | None = None
        if news:
            event = progress(task, text or seen, provider_status=seen)
        async with self.committer.transaction() as cs:
            cs.note(task, event, deadline_at=cs.now + latest + cs.timings.stale_after)
            cs.send(task, next_poll, delay=wait, slack=slack)
