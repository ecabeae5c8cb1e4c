"""What every step of an attempt works with: the task, the message, its kind's handler,
options and breaker, and the small helpers they share (runner, polling, outcomes, guards)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.attempts.kind import ProviderCalls, Work, budget_name
from common.attempts.options import Registration
from common.domain.messages import MessageKind, TaskMessage
from common.domain.records import TaskRecord
from common.resilience import CircuitBreaker, Permit

if TYPE_CHECKING:
    from common.attempts.runner import AttemptRunner


class StepContext:
    """One message's step for one task: what the step's parts share."""

    def __init__(
        self,
        runner: AttemptRunner,
        registration: Registration,
        task: TaskRecord,
        message: TaskMessage,
    ) -> None:
        self.runner = runner
        self.registration = registration
        self.committer = runner.committer
        self.kinds = runner.committer.kinds
        self.handler = registration.handler
        self.spec = registration.handler.spec
        self.policy = registration.policy
        self.options = registration.options
        self.breaker: CircuitBreaker = runner.breakers.breaker(self.spec.provider)
        self.task = task
        self.message = message

    def _calls(self, permit: Permit | None = None) -> ProviderCalls:
        return ProviderCalls(
            self.breaker,
            timeout=self.options.call_timeout,
            provider=self.spec.provider,
            permit=permit,
        )

    async def _work(self, task: TaskRecord) -> Work:
        return Work(task, await self.handler.load(task))

    def _budget(self, work: Work) -> str:
        """The shared budget an attempt spends: its provider's, for its model."""
        return budget_name(self.spec.provider, self.handler.model(work))

    def _overdue(self) -> bool:
        deadline = self.task.deadline_at
        return deadline is not None and deadline <= self.committer.clock()

    def _poll_window(self) -> float:
        return self.options.poll_interval + self.committer.timings.stale_after

    def _first_poll_delay(self, work: Work) -> float:
        first = self.options.first_poll_delay
        if first is not None:
            return first
        if self.options.learn_first_poll:
            learned = self.runner.run_times.expected(self._budget(work))
            if learned is not None:
                return learned
        return self.options.poll_interval

    def _poll_message(self, chain: int) -> TaskMessage:
        task = self.task
        return TaskMessage(task.id, task.job_id, MessageKind.POLL, task.attempt, chain=chain)
