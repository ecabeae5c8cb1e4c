"""Provider calls a worker made besides starting attempts (status checks, results, cancels),
added to the shared per-model budgets so the fleet-wide retry budget weighs retries against
every call the provider answered, not only against submits.

An attempt's start spends its budget in the same transaction (it may have to wait for it);
these other calls only need counting, so they are tallied in memory and written with the next
change set the process commits (a hook of the group committer, like breaker transitions): no
extra transaction, and a count lost with a crashed process only makes the budget stricter.
"""

from __future__ import annotations

from collections import Counter

from common.domain.changes import ChangeSet


class CallTally:
    def __init__(self) -> None:
        self._calls: Counter[str] = Counter()

    def add(self, budget: str, calls: int) -> None:
        if calls > 0:
            self._calls[budget] += calls

    @property
    def pending(self) -> bool:
        return False  # never worth a commit of its own

    def attach(self, cs: ChangeSet) -> None:
        """Move the tallied calls onto `cs` (back into the tally if `cs` does not commit)."""
        if not self._calls:
            return
        taken, self._calls = self._calls, Counter()
        for budget, calls in taken.items():
            cs.tally(budget, calls)
        cs.on_abort.append(lambda: self._calls.update(taken))
