"""Circuit-breaker transitions become job events (and the job's warning).

A breaker lives in one worker process and changes state synchronously inside a call; the
transition is queued here and written with the next change set the process commits (this is a
hook of the group committer, so no handler can forget it), as a BREAKER event on that change
set's job (and, when it opens, that job's warning; closing clears the warning of every job that
carries it). Deferral events tell every other affected job why its tasks wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common import metrics
from common.domain.changes import ChangeSet
from common.domain.events import EventDraft, EventType
from common.resilience import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)

log = logging.getLogger(__name__)


class BreakerEvents:
    def __init__(
        self, config: BreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.transitions: list[BreakerTransition] = []
        self._seen: set[str] = set()
        self.registry = BreakerRegistry(config, clock=clock, on_transition=self._on_transition)

    def _on_transition(self, transition: BreakerTransition) -> None:
        log.warning(
            "circuit %s: %s -> %s (%s)",
            transition.name,
            transition.old,
            transition.new,
            transition.reason,
            extra={"event": "warning", "breaker": transition.name, "state": transition.new},
        )
        metrics.breaker_transitions.labels(transition.name, transition.new).inc()
        for state in BreakerState:
            value = 1 if state is transition.new else 0
            metrics.breaker_state.labels(transition.name, state).set(value)
        self.transitions.append(transition)

    def _put_back(self, taken: list[BreakerTransition]) -> None:
        self.transitions[:0] = taken

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of provider `name` (created CLOSED, and shown so, on first use)."""
        if name not in self._seen:
            self._seen.add(name)
            metrics.breaker_state.labels(name, BreakerState.CLOSED).set(1)
        return self.registry.get(name)

    @property
    def pending(self) -> bool:
        return bool(self.transitions)

    def attach(self, tx: ChangeSet) -> None:
        """Write the transitions seen since the last call as events of `tx`'s job (put back if
        `tx` does not commit)."""
        job_id = tx.first_job
        if not self.transitions or job_id is None:
            return
        taken, self.transitions[:] = list(self.transitions), []
        tx.on_abort.append(lambda: self._put_back(taken))
        for t in taken:
            if t.new is BreakerState.OPEN:
                warning = f"{_warning_prefix(t.name)} ({t.reason}); tasks are deferred"
                tx.update_job(job_id, warning=warning)
            elif t.new is BreakerState.CLOSED:
                tx.clear_warnings.append(_warning_prefix(t.name))
            tx.emit(
                job_id,
                EventDraft(
                    EventType.BREAKER,
                    message=f"{t.name} circuit {t.old} -> {t.new}: {t.reason}",
                    details={
                        "breaker": t.name,
                        "state": t.new.value,
                        "from": t.old.value,
                        "reason": t.reason,
                    },
                ),
            )


def _warning_prefix(name: str) -> str:
    return f"{name} is failing: circuit open"
