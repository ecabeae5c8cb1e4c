"""The service's Prometheus metrics: one registry per process, names with units, `_total`
counters, labels from small fixed sets (never ids).

Every process registers these on `REGISTRY` (prometheus_client's default), whether or not it
uses them, so a dashboard finds the same series everywhere. The gateway serves them on its
HTTP port at /metrics; each worker on its own METRICS_ADDR (see `serve_metrics`). Gauges that
are cheaper to read than to keep (jobs and tasks per status, slots) are filled at scrape time by
collectors the gateway registers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "orchestrator"
# Provider calls take from milliseconds (a status check) to minutes (a long chat completion).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

provider_calls = Counter(
    f"{PREFIX}_provider_calls_total",
    "Provider calls by provider, endpoint, outcome and HTTP status code.",
    ["provider", "endpoint", "outcome", "code"],
)
provider_call_seconds = Histogram(
    f"{PREFIX}_provider_call_duration_seconds",
    "Time of provider calls (whatever their outcome).",
    ["provider", "endpoint"],
    buckets=CALL_BUCKETS,
)
hedged_reads = Counter(
    f"{PREFIX}_provider_hedged_reads_total",
    "Second copies of a provider read (status, result), by why: slow or failed first copy.",
    ["provider", "reason"],
)
delay_hops = Counter(
    f"{PREFIX}_broker_delay_hops_total",
    "Delayed messages that arrived early and were parked in a delay tier again, by work queue.",
    ["queue"],
)
task_retries = Counter(
    f"{PREFIX}_task_retries_total",
    "Failed attempts that are retried, by task kind and error class.",
    ["kind", "error_class"],
)
task_deferrals = Counter(
    f"{PREFIX}_task_deferrals_total",
    "Work put off without spending an attempt, by task kind and reason.",
    ["kind", "reason"],
)
task_outcomes = Counter(
    f"{PREFIX}_task_outcomes_total",
    "Tasks that ended, by kind and final status.",
    ["kind", "status"],
)
lost_submits = Counter(
    f"{PREFIX}_lost_submits_total",
    "Attempts made again because their worker died mid-call (a provider may bill both).",
    ["kind"],
)
adopted_requests = Counter(
    f"{PREFIX}_adopted_requests_total",
    "Requests whose submit was cut off by a worker's death, adopted when the provider's webhook"
    " named them (a second payment saved).",
    ["kind"],
)
reused_results = Counter(
    f"{PREFIX}_reused_results_total",
    "Tasks that took an identical earlier task's result: provider calls saved.",
    ["kind"],
)
breaker_state = Gauge(
    f"{PREFIX}_breaker_state",
    "Circuit breaker state per provider: 1 for the current state, 0 for the others.",
    ["provider", "state"],
)
breaker_transitions = Counter(
    f"{PREFIX}_breaker_transitions_total",
    "Circuit breaker state changes, by provider and new state.",
    ["provider", "state"],
)
messages_handled = Counter(
    f"{PREFIX}_messages_handled_total",
    "Task messages handled by a worker, by queue and outcome.",
    ["queue", "outcome"],
)
commit_batch_size = Histogram(
    f"{PREFIX}_commit_batch_size",
    "Change sets applied per group-commit transaction.",
    buckets=BATCH_BUCKETS,
)
commit_seconds = Histogram(
    f"{PREFIX}_commit_duration_seconds",
    "Time of one group-commit transaction.",
    buckets=COMMIT_BUCKETS,
)
jobs = Gauge(f"{PREFIX}_jobs", "Jobs per kind and status.", ["kind", "status"])
tasks = Gauge(f"{PREFIX}_tasks", "Tasks per kind and status.", ["kind", "status"])
slots_in_use = Gauge(
    f"{PREFIX}_provider_slots_in_use", "Provider slots held by tasks, per pool.", ["pool"]
)
slots_limit = Gauge(f"{PREFIX}_provider_slots_limit", "Provider slots per pool.", ["pool"])
watchers = Gauge(
    f"{PREFIX}_watchers",
    "Clients following a job's events, by transport.",
    ["transport"],
)


def record_call(
    provider: str, endpoint: str, outcome: str, code: int | None, seconds: float
) -> None:
    provider_calls.labels(provider, endpoint, outcome, str(code or "")).inc()
    provider_call_seconds.labels(provider, endpoint).observe(seconds)


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as took:` ... `took[0]` is the block's seconds afterwards."""
    took = [0.0]
    started = time.perf_counter()
    try:
        yield took
    finally:
        took[0] = time.perf_counter() - started


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
