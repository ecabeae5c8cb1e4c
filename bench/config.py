"""What a benchmark run is made of: the sizes of each scenario (full or smoke) and the targets.

Sizes are data, not code: `FULL` is what `make bench` measures, `SMOKE` the same harness with
small numbers so `make bench-smoke` finishes in well under a minute and never rots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCENARIOS = (
    "overhead",
    "utilisation",
    "faults",
    "progress",
    "scale",
    "fairness",
    "storm",
    "spend",
    "delays",
)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    """Every knob of the scenarios; see each scenario module for how it is used."""

    # 1. Orchestration overhead: zero-latency provider, no effective provider limit.
    overhead_segments: int
    overhead_poll_interval: float
    overhead_concurrency: int
    # Rounds of (orchestrator, raw broker, Celery), back to back; each figure is their median.
    overhead_rounds: int
    # 3./4. Provider utilisation and faults: N segments of `latency` s under a limit.
    utilisation_segments: int
    utilisation_latency: float
    utilisation_concurrency: int
    polling_interval: float
    webhook_fallback_poll: float
    fault_rate: float
    fault_hang_seconds: float
    fault_call_timeout: float
    fault_max_retries: int
    # BREAKER_OPEN_SECONDS for the faults run; None: the service default (what is measured).
    fault_breaker_open_seconds: float | None
    # 5. Progress latency: watchers on one running job.
    progress_watchers: int
    # ...then this many at once on another job, half WatchJob and half SSE (the web page's).
    progress_mixed_watchers: int
    progress_segments: int
    progress_latency: float
    progress_concurrency: int
    # 6. Scale: one big job.
    scale_segments: int
    # 7. Fairness: a small job started while a big one holds every provider slot.
    fairness_big_segments: int
    fairness_small_segments: int
    fairness_small_after: float  # seconds from the big job's start to the small one's
    fairness_small_alone_runs: int  # the small job alone, this many times (median)
    fairness_latency: float
    fairness_latency_jitter: float  # ± fraction of the latency
    # 8. A 429 storm on fal's queue API while a job runs on several video workers.
    storm_segments: int
    storm_latency: float
    storm_workers: int
    storm_after: float  # seconds from the job's start to the storm's
    storm_seconds: float
    storm_retry_after: float
    # 9. Spend: submits per delivered segment, under faults and under worker kills.
    spend_segments: int
    spend_latency: float
    spend_kills: int
    spend_submit_hold: float  # seconds each submit's answer is held after fal accepted it
    # RETRY_BUDGET_FLOOR of the storm and spend runs; None: the service default (measured).
    retry_budget_floor: int | None
    # Celery peer: prefork pool size.
    celery_concurrency: int
    # 10. Delayed delivery: messages, and the range their delays are drawn from (seconds).
    delay_messages: int
    delay_min: float
    delay_max: float


CORES = os.cpu_count() or 1

FULL = Sizes(
    overhead_segments=2000,
    overhead_poll_interval=0.05,
    overhead_concurrency=10_000,
    overhead_rounds=3,
    utilisation_segments=1000,
    utilisation_latency=2.0,
    utilisation_concurrency=50,
    polling_interval=0.25,
    webhook_fallback_poll=30.0,
    fault_rate=0.20,
    fault_hang_seconds=2.0,
    fault_call_timeout=1.0,
    fault_max_retries=10,
    fault_breaker_open_seconds=None,
    progress_watchers=100,
    progress_mixed_watchers=1000,
    progress_segments=300,
    progress_latency=0.5,
    progress_concurrency=50,
    scale_segments=10_000,
    fairness_big_segments=2000,
    fairness_small_segments=20,
    fairness_small_after=10.0,
    fairness_small_alone_runs=3,
    fairness_latency=1.5,
    fairness_latency_jitter=0.33,
    storm_segments=600,
    storm_latency=2.0,
    storm_workers=2,
    storm_after=8.0,
    storm_seconds=60.0,
    storm_retry_after=1.0,
    spend_segments=300,
    spend_latency=1.5,
    spend_kills=3,
    spend_submit_hold=0.5,
    retry_budget_floor=None,
    celery_concurrency=CORES,
    delay_messages=600,
    delay_min=0.05,
    delay_max=2.5,
)

SMOKE = Sizes(
    overhead_segments=100,
    overhead_poll_interval=0.05,
    overhead_concurrency=10_000,
    overhead_rounds=1,
    utilisation_segments=100,
    utilisation_latency=0.2,
    utilisation_concurrency=50,
    polling_interval=0.25,
    # Short, so a webhook the orchestrator drops cannot stretch the smoke run by 30 s.
    webhook_fallback_poll=1.0,
    fault_rate=0.20,
    fault_hang_seconds=2.0,
    fault_call_timeout=1.0,
    fault_max_retries=10,
    # A 10 s open circuit would dominate a 100-segment smoke run.
    fault_breaker_open_seconds=1.0,
    progress_watchers=20,
    progress_mixed_watchers=40,
    progress_segments=50,
    progress_latency=0.2,
    progress_concurrency=50,
    scale_segments=500,
    fairness_big_segments=300,
    fairness_small_segments=5,
    fairness_small_after=1.0,
    fairness_small_alone_runs=1,
    fairness_latency=0.5,
    fairness_latency_jitter=0.33,
    storm_segments=150,
    storm_latency=0.5,
    storm_workers=2,
    storm_after=1.0,
    # A few seconds: CI runs the smoke benchmark.
    storm_seconds=3.0,
    storm_retry_after=1.0,
    spend_segments=60,
    spend_latency=0.5,
    spend_kills=1,
    spend_submit_hold=0.5,
    # Past 10 retries a minute (the default floor of a small run), retries wait for the minute's
    # end: up to a minute per smoke run.
    retry_budget_floor=1000,
    celery_concurrency=CORES,
    delay_messages=100,
    delay_min=0.05,
    delay_max=0.5,
)


@dataclass(frozen=True)
class RunOptions:
    """The command line, parsed."""

    smoke: bool
    scenarios: tuple[str, ...]
    json_path: Path
    database: Literal["sqlite", "postgres"]
    amqp_url: str
    postgres_url: str
    log_level: str
    keep_logs: bool
    strict: bool
    # `--pin CORE`: the benchmark and every process it starts on this one core (None: unpinned).
    pin: int | None = None

    @property
    def sizes(self) -> Sizes:
        return SMOKE if self.smoke else FULL
