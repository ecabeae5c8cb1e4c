"""How long a model's attempts take, learned fleet-wide (model_stats) and cached per process:
an attempt that could not finish before its job's deadline is not started."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from common.store.database import Database
from common.store.tables import ModelStats

REFRESH_SECONDS = 30.0


class Durations:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.clock = clock
        self._means: dict[str, float] = {}
        self._read_at = float("-inf")

    async def expected(self, model: str) -> float:
        """Seconds a successful attempt of `model` usually takes (0 when unknown)."""
        if self.clock() - self._read_at > REFRESH_SECONDS:
            async with self.db.read() as session:
                rows = await session.execute(select(ModelStats.name, ModelStats.mean_seconds))
                self._means = {name: mean for name, mean in rows}
            self._read_at = self.clock()
        return self._means.get(model, 0.0)


RUN_TIME_WEIGHT = 0.2
# A reported run time beyond this is not a generation's (a provider's bug): ignored.
MAX_RUN_TIME = 3600.0


class RunTimes:
    """How long a model's generations run, as the provider reports it (not as we saw it: our
    own latency would feed back into when we look), learned in this process: the first status
    check of a request is due when a generation like it usually ends, not after a fixed
    interval followed by checks that can only say "not yet"."""

    def __init__(self) -> None:
        self._means: dict[str, float] = {}

    def observe(self, model: str, seconds: float) -> None:
        if not 0 <= seconds <= MAX_RUN_TIME:  # NaN and Infinity fail this too
            return
        mean = self._means.get(model)
        self._means[model] = seconds if mean is None else mean + RUN_TIME_WEIGHT * (seconds - mean)

    def expected(self, model: str) -> float | None:
        """The moving average of reported run times (None before the first report)."""
        return self._means.get(model)
