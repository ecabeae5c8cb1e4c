"""Circuit-breaker transitions become job events (and the job's warning).

A breaker lives in one worker process and changes state synchronously inside a call; the
transition is queued here and written, with the next write transaction of the handler that
observed it, as a BREAKER event on that handler's job. Deferral events then tell every other
affected job why its tasks wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import update

from common.domain.events import EventDraft, EventType
from common.resilience import BreakerConfig, BreakerRegistry, BreakerState, BreakerTransition
from common.store.ledger import Tx
from common.store.tables import Job

log = logging.getLogger(__name__)


class BreakerEvents:
    def __init__(
        self, config: BreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pending: list[BreakerTransition] = []
        self.registry = BreakerRegistry(config, clock=clock, on_transition=self._on_transition)

    def _on_transition(self, transition: BreakerTransition) -> None:
        log.warning(
            "circuit %s: %s -> %s (%s)",
            transition.name,
            transition.old,
            transition.new,
            transition.reason,
        )
        self.pending.append(transition)

    async def record(self, tx: Tx, job_id: str) -> None:
        """Write the transitions seen since the last call as events of `job_id`."""
        while self.pending:
            t = self.pending.pop(0)
            if t.new is BreakerState.OPEN:
                warning = f"{t.name} is failing: circuit open ({t.reason}); tasks are deferred"
            elif t.new is BreakerState.CLOSED:
                warning = ""
            else:
                warning = f"{t.name} circuit half-open: probing whether it recovered"
            await tx.session.execute(update(Job).where(Job.id == job_id).values(warning=warning))
            await tx.emit(
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
