"""What a task kind supplies to the attempt runner: how to call its provider, and what success
records. Everything generic (stale and duplicate messages, the breaker, slots, deferral, the
commit of a request id before anything else, retries, polling, cancel) is the runner's.

A kind's handler subclasses `KindHandler` and overrides what applies:

* `submit` makes the attempt's provider call(s) through `calls` and returns `Succeeded` (a
  one-shot kind: the work is done) or `Submitted` (a polled kind: the provider took a request,
  which the runner commits before anything else and then polls);
* `check` (polled kinds) asks about a submitted request: `Pending`, `Succeeded`,
  `RequestFailed` when the provider reports the generation itself failed, or `ResultDelayed`
  when it finished but fetching its result failed (a retryable error);
* `cancel` (polled kinds) cancels a submitted request;
* `load` reads what the kind needs besides the task (e.g. its job's plan); `on_success` adds
  changes to the success's change set; `after_commit` does side effects once an outcome is
  committed (files).

Failures are `common.resilience` errors: a `TransientError` is retried with the kind's policy,
a `PermanentError` fails the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from common import metrics
from common.domain.changes import ChangeSet
from common.domain.kinds import TaskKindSpec
from common.domain.records import TaskRecord
from common.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    ErrorClass,
    Permit,
    ProviderError,
    call_with_breaker,
    call_with_permit,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """The task an attempt is about, and what the kind loaded for it."""

    task: TaskRecord
    context: Any = None


@dataclass(frozen=True)
class RateLimits:
    """A provider's rate-limit headers (OpenAI's x-ratelimit-*): per-minute limits and what
    is left of them."""

    requests: int | None = None
    tokens: int | None = None
    remaining_requests: int | None = None

    @property
    def used_requests(self) -> int | None:
        if self.requests is None or self.remaining_requests is None:
            return None
        return max(0, self.requests - self.remaining_requests)


@dataclass(frozen=True)
class Submitted:
    """A polled kind's provider accepted a request: its id and whatever finds it again.

    A request adopted from the provider's webhook after its submit's answer was lost
    (common.attempts.webhooks) has only its id: the task's handle is then empty, and `check`
    and `cancel` must find the request from the id and the task's payload.
    """

    request_id: str
    handle: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Succeeded:
    """The attempt's result, recorded on the task, and its event's words and details."""

    result: dict[str, Any]
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    # What the kind hands its own `on_success` (not recorded on the task).
    output: Any = None
    # What the provider's answer said of its rate limits, if anything.
    limits: RateLimits | None = None
    # How long the provider says the generation itself ran (its own metrics), if it said:
    # learned per model for the first status check of the next requests.
    ran_for: float | None = None


@dataclass(frozen=True)
class Reported:
    """What a polled kind makes of the result its provider's verified call-back carried: the
    attempt's outcome, and the model it ran on (whose budget and durations it counts in)."""

    outcome: Succeeded
    model: str


# How a polled kind reads the result (JSON) a call-back carried for a task; None when it holds
# no usable one (the worker then fetches it). Pure: it runs wherever the call-back arrives (the
# gateway), which records the success with no worker step: only for a kind whose handler has
# no `on_success` or `after_commit` and learns nothing from a result (limits, run time), and
# only for a request its submit committed with a handle: one without may have been adopted
# from a call-back alone (common.attempts.webhooks), and is fetched with our key instead.
ReadReported = Callable[[TaskRecord, str], Reported | None]


def budget_name(provider: str, model: str) -> str:
    """The shared budget (and learned durations) of a provider's model."""
    return f"{provider}:{model}"


@dataclass(frozen=True)
class Pending:
    """The request is not done; `seen` is the provider's state in a stable form (an event is
    written when it changes), `text` the words for it."""

    seen: str
    text: str


@dataclass(frozen=True)
class RequestFailed:
    """The provider reports the request itself failed: a failed attempt (retried by policy)."""

    error: ProviderError


@dataclass(frozen=True)
class ResultDelayed:
    """The provider finished the request (it runs nothing for it any more) but fetching the
    result failed with `error`, a retryable error: the task's provider slot is handed on now,
    and the result is fetched later."""

    error: ProviderError


class ProviderCalls:
    """The provider calls of one step, each under the kind's circuit breaker and call timeout.

    The first call may use a permit taken before the step began (so no other coroutine takes the
    last half-open probe while the task reserved its slot); the others take their own.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        provider: str,
        permit: Permit | None = None,
    ) -> None:
        self.breaker = breaker
        self.timeout = timeout
        self.provider = provider
        self._permit = permit
        # Calls that reached (or were meant to reach) the provider: not those the circuit held.
        self.made = 0

    async def __call__(self, endpoint: str, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()`, a call of the provider's `endpoint` ("submit", "status", "chat"...),
        counted and timed in the metrics and logged."""
        permit, self._permit = self._permit, None
        started = time.perf_counter()
        outcome, code = "ok", None
        try:
            if permit is None:
                return await call_with_breaker(
                    self.breaker, fn, timeout=self.timeout, provider=self.provider
                )
            return await call_with_permit(
                self.breaker, permit, fn, timeout=self.timeout, provider=self.provider
            )
        except ProviderError as exc:
            outcome, code = ("transient" if exc.retryable else "permanent"), exc.status_code
            if exc.error_class is ErrorClass.TIMEOUT:
                outcome = "timeout"
            raise
        except CircuitOpenError:
            outcome = "circuit_open"
            raise
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            seconds = time.perf_counter() - started
            if outcome != "circuit_open":
                self.made += 1
            metrics.record_call(self.provider, endpoint, outcome, code, seconds)
            log.debug(
                "%s %s: %s%s in %.3fs",
                self.provider,
                endpoint,
                outcome,
                f" ({code})" if code else "",
                seconds,
                extra={"event": "call", "provider": self.provider, "endpoint": endpoint},
            )

    def release(self) -> None:
        """Give back a permit no call used."""
        permit, self._permit = self._permit, None
        if permit is not None:
            self.breaker.release(permit)


class KindHandler:
    """Base of a task kind's handler; see the module docstring."""

    spec: ClassVar[TaskKindSpec]

    async def load(self, task: TaskRecord) -> Any:
        """What the kind needs besides the task; raise StaleTask when it is gone."""
        return None

    def model(self, work: Work) -> str:
        """The provider model an attempt calls: its shared budget and learned duration are the
        provider's and this model's."""
        return "*"

    def tokens(self, work: Work) -> int:
        """The tokens an attempt will likely spend (for per-minute token budgets; 0: none)."""
        return 0

    async def submit(self, work: Work, calls: ProviderCalls) -> Submitted | Succeeded:
        raise NotImplementedError

    async def check(
        self, work: Work, calls: ProviderCalls, *, notified: bool
    ) -> Pending | Succeeded | RequestFailed | ResultDelayed:
        """`notified`: the provider called back to say the request finished (a webhook)."""
        raise NotImplementedError(f"{self.spec.name} is not a polled kind")

    async def cancel(self, work: Work, calls: ProviderCalls) -> bool:
        """True when cancellation was requested, False when the request had already finished."""
        return False

    def on_success(self, cs: ChangeSet, work: Work, outcome: Succeeded) -> None:
        """More changes in the success's change set (e.g. a plan stored on the job)."""

    async def after_commit(self, work: Work, cs: ChangeSet) -> None:
        """Side effects once an outcome of `work` is committed (read `cs.finished`)."""
