"""Scheduling rules, as pure functions: who gets a provider slot, how a job's status follows its
tasks, and how a finished job is summed up.

The batch applier (common.domain.batch) calls these while it applies change sets to the rows the
store loaded; they see only immutable values, so they are unit-tested without a database.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.domain.states import JobStatus, TaskStatus, job_outcome

# A task keeps its provider slot in these statuses (QUEUED: granted, its run message on the way).
KEEPS_SLOT = frozenset({TaskStatus.QUEUED, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
# A job with a task in one of these has started.
ACTIVE = frozenset({TaskStatus.WAITING, TaskStatus.SUBMITTING, TaskStatus.RUNNING})
# How many not-done task indices a finished job's message names.
SHOWN_NOT_DONE = 20


@dataclass(frozen=True)
class Candidate:
    """A WAITING task that could be handed a free slot."""

    task_id: int
    job_id: str
    priority: int
    owner: str = ""


# When a job (or owner) was last handed a slot: (time, order within one batch). Never: first.
Stamp = tuple[float, int]
NEVER: Stamp = (float("-inf"), 0)


@dataclass
class Shares:
    """Slots of one pool held per job and per owner, each job's cap (0: none), and when each
    job and owner was last handed a slot (`served`, `owner_served`; `now` stamps the slots
    taken while these shares are counted)."""

    by_job: dict[str, int]
    by_owner: dict[str, int]
    caps: dict[str, int]
    served: dict[str, Stamp] = field(default_factory=dict)
    owner_served: dict[str, Stamp] = field(default_factory=dict)
    now: float = 0.0
    _taken: int = 0

    def under_cap(self, job_id: str) -> bool:
        cap = self.caps.get(job_id, 0)
        return cap <= 0 or self.by_job.get(job_id, 0) < cap

    def seen(self, job_id: str, owner: str, at: float | None) -> None:
        """The job (of `owner`) was last handed a slot at `at` (as the store knows it)."""
        if at is None:
            return
        stamp = (at, 0)
        self.served[job_id] = max(self.served.get(job_id, NEVER), stamp)
        self.owner_served[owner] = max(self.owner_served.get(owner, NEVER), stamp)

    def take(self, job_id: str, owner: str) -> None:
        self.by_job[job_id] = self.by_job.get(job_id, 0) + 1
        self.by_owner[owner] = self.by_owner.get(owner, 0) + 1
        self._taken += 1
        self.served[job_id] = self.owner_served[owner] = (self.now, self._taken)

    def give_back(self, job_id: str, owner: str) -> None:
        self.by_job[job_id] = max(0, self.by_job.get(job_id, 0) - 1)
        self.by_owner[owner] = max(0, self.by_owner.get(owner, 0) - 1)


def may_take_slot(
    *, holds_slot: bool, in_flight: int, capacity: int, under_cap: bool = True
) -> bool:
    """An attempt starts when its task already holds a slot, or one of the pool is free and
    its job is under its cap."""
    return holds_slot or (in_flight < capacity and under_cap)


def releases_slot(*, holds_slot: bool, new: TaskStatus) -> bool:
    return holds_slot and new not in KEEPS_SLOT


def grant_order(
    candidates: Sequence[Candidate], free: int, shares: Shares | None = None
) -> list[Candidate]:
    """The WAITING tasks that get the `free` slots, one slot at a time (fair shares):

    1. the highest job priority;
    2. among those, the owner holding the fewest slots of the pool, and among owners holding
       as many, the one handed a slot longest ago (never: first);
    3. that owner's job holding the fewest (a job at its cap gets none), and among jobs
       holding as many, the one handed a slot longest ago;
    4. that job's oldest task; remaining ties go to the oldest task.

    So a small job started behind a large one is served at once, each job and owner gets an
    equal share of a busy pool, slots freed one at a time go round-robin (the job that just
    gave one back does not win it again while another waits), and priority still comes
    first. `shares` is counted along (its counts include the slots this grant hands out)."""
    shares = shares or Shares({}, {}, {})
    queues: dict[str, deque[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.task_id):
        queues.setdefault(c.job_id, deque()).append(c)
    chosen: list[Candidate] = []
    while len(chosen) < free:
        heads = [q[0] for job, q in queues.items() if q and shares.under_cap(job)]
        if not heads:
            break
        best = min(
            heads,
            key=lambda c: (
                -c.priority,
                shares.by_owner.get(c.owner, 0),
                shares.owner_served.get(c.owner, NEVER),
                shares.by_job.get(c.job_id, 0),
                shares.served.get(c.job_id, NEVER),
                c.task_id,
            ),
        )
        queues[best.job_id].popleft()
        chosen.append(best)
        shares.take(best.job_id, best.owner)
    return chosen


def started_status(status: JobStatus, *, active: bool) -> JobStatus | None:
    """A QUEUED job becomes RUNNING once one of its tasks is active; None: unchanged."""
    if status is JobStatus.QUEUED and active:
        return JobStatus.RUNNING
    return None


def finishes(*, open_tasks: int, touched: bool, status: JobStatus) -> bool:
    """A job finishes when a change left none of its tasks open (and it is not finished)."""
    return open_tasks == 0 and touched and not status.terminal


def outcome(
    counts: Mapping[TaskStatus, int],
    not_done: Sequence[int],
    *,
    plural: str,
    cancelled: bool,
) -> tuple[JobStatus, str]:
    """A finished job's status and message, from its output tasks per status and the indices
    of those that did not succeed (in order; more than SHOWN_NOT_DONE are elided)."""
    succeeded = counts.get(TaskStatus.SUCCEEDED, 0)
    total = sum(counts.values())
    status = job_outcome(succeeded=succeeded, unsuccessful=total - succeeded, cancelled=cancelled)
    message = f"{succeeded} of {total} {plural} succeeded"
    if not_done:
        shown = ", ".join(str(i) for i in not_done[:SHOWN_NOT_DONE])
        message += f"; not done: {shown}{'…' if len(not_done) > SHOWN_NOT_DONE else ''}"
    return status, message


# Shared provider budgets ---------------------------------------------------------------------

WINDOW = 60.0  # budgets count per minute
MIN_RETRY_WAIT = 0.1
MAX_RELEASE_SPREAD = 10.0
GOLDEN = 0.6180339887498949  # successive ids land far apart in [0, 1)


@dataclass
class Budget:
    """One provider-and-model's shared budget row (see common.store.tables.ProviderBudget)."""

    name: str
    paused_until: float = 0.0
    rpm: int = 0
    tpm: int = 0
    window_start: float = 0.0
    requests: int = 0
    tokens: int = 0
    retries: int = 0
    prev_requests: int = 0
    prev_retries: int = 0
    changed: bool = False
    # Calls besides starts (status checks, results): the retry budget's calls, not the rpm's.
    checks: int = 0
    prev_checks: int = 0
    # When the pause now running began (the 429 that set it was recorded).
    paused_at: float = 0.0
    # Pauses in a row with no call accepted since the first began: 1 is a lone 429, more a
    # provider refusing every call (a storm).
    pause_streak: int = 0

    def roll(self, now: float) -> None:
        """Move to the minute `now` is in (the previous minute kept for the retry budget)."""
        start = now - now % WINDOW
        if start == self.window_start:
            return
        adjacent = start - self.window_start == WINDOW
        self.prev_requests = self.requests if adjacent else 0
        self.prev_retries = self.retries if adjacent else 0
        self.prev_checks = self.checks if adjacent else 0
        self.window_start, self.requests, self.tokens, self.retries = start, 0, 0, 0
        self.checks = 0

    @property
    def calls(self) -> int:
        """Every call of this minute: starts and the rest."""
        return self.requests + self.checks

    @property
    def prev_calls(self) -> int:
        return self.prev_requests + self.prev_checks


@dataclass(frozen=True)
class BudgetPolicy:
    """Fleet-wide retry budget: retries may add at most `retry_ratio` of a provider's calls
    over the last minute (sliding), with `retry_floor` retries a minute always allowed."""

    retry_ratio: float = 0.1
    retry_floor: int = 10


def budget_wait(budget: Budget, now: float, tokens: int) -> float:
    """Seconds a call must wait for `budget` (0: it may go now): a pause, or a per-minute
    request or token budget already spent."""
    if budget.paused_until > now:
        return budget.paused_until - now
    budget.roll(now)
    spent = (budget.rpm and budget.requests >= budget.rpm) or (
        budget.tpm and budget.tokens > 0 and budget.tokens + tokens > budget.tpm
    )
    return budget.window_start + WINDOW - now if spent else 0.0


def spend(budget: Budget, tokens: int) -> None:
    budget.requests += 1
    budget.tokens += tokens
    budget.changed = True


def retry_wait(budget: Budget, now: float, policy: BudgetPolicy) -> float:
    """0 when one more retry fits the retry budget now; else the seconds until it will if the
    provider's calls go on at this minute's rate (at most until the minute ends).

    The budget is a sliding minute: the previous minute counts by how much of it still lies in
    the last 60 s, so its calls and retries fade while new calls add room. `calls` are every
    call the provider answered (starts, and the status checks tallied by common.attempts.usage).
    """
    budget.roll(now)
    into = now - budget.window_start
    weight = 1 - into / WINDOW
    calls = budget.calls + budget.prev_calls * weight
    retries = budget.retries + budget.prev_retries * weight
    excess = retries + 1 - max(policy.retry_floor, policy.retry_ratio * calls)
    if excess <= 0:
        return 0.0
    rest = WINDOW - into
    # Room gained per second: new calls at this minute's rate so far, less the old minute's
    # calls fading, plus its retries fading.
    rate = budget.calls / max(into, 1.0)
    gain = policy.retry_ratio * (rate - budget.prev_calls / WINDOW) + (budget.prev_retries / WINDOW)
    if gain <= 0:
        return rest
    return min(rest, max(MIN_RETRY_WAIT, excess / gain))


def retry_allowed(budget: Budget, now: float, policy: BudgetPolicy) -> bool:
    """Whether one more retry fits the retry budget now."""
    return retry_wait(budget, now, policy) == 0.0


def tally(budget: Budget, now: float, calls: int) -> None:
    """Calls made besides starts (status checks, results) count towards the minute's calls."""
    budget.roll(now)
    budget.checks += calls
    budget.changed = True


def release_spread(task_id: int, over: float, until: float = 0.0) -> float:
    """Extra seconds for one of many starts held back together (by a pause, or a spent
    minute), so they do not all call the provider the moment the wait ends: an offset per task,
    spread evenly over `over` seconds (the wait itself, see `held_spread`; at most 10 s). The
    order changes with the wait (`until`: when it ends): the first to go after a pause meets the
    provider's next 429, and with a fixed order the same few tasks would spend all their
    attempts on a long storm."""
    spread = min(over, MAX_RELEASE_SPREAD)
    turn = int(until * 1000) % 1_000_003
    return spread * (((task_id + turn) * GOLDEN) % 1.0)


def learn(budget: Budget, *, rpm: int | None, tpm: int | None, used_requests: int | None) -> None:
    """What the provider's own headers say of the budget (limits, and how much is used)."""
    if rpm:
        budget.rpm = rpm
    if tpm:
        budget.tpm = tpm
    if used_requests is not None:
        budget.requests = max(budget.requests, used_requests)
    budget.changed = True


def pause(budget: Budget, until: float, now: float, refused_at: float | None = None) -> None:
    """Hold every start of `budget` until `until`. `refused_at`: when the provider's 429 was
    answered (default `now`, the batch's time); a submit accepted after that moment and
    applied after this pause ends it (`accepted`), even when its answer came before the pause
    was committed. One applied before the pause does not (the budget keeps no record of it)."""
    if until > budget.paused_until:
        if budget.paused_until <= now:  # a new pause, not a longer one
            budget.paused_at = now if refused_at is None else min(refused_at, now)
            budget.pause_streak += 1
        budget.paused_until = until
        budget.changed = True


def accepted(budget: Budget, answered_at: float, now: float) -> None:
    """A submit the provider accepted after a pause began ends it: it takes work again. A
    lone 429 among accepted calls (fal answering one in 25 with 429 under load) then costs the
    fleet milliseconds, not its Retry-After each time; a storm refuses every submit, and its
    pause holds. The streak of pauses ends too: the next 429 is a lone one again."""
    if answered_at <= budget.paused_at:
        return
    if budget.paused_until > now:
        budget.paused_until = now
        budget.changed = True
    if budget.pause_streak:
        budget.pause_streak = 0
        budget.changed = True


def held_spread(budget: Budget, now: float, wait: float) -> float:
    """Over how long the starts a budget holds back for `wait` seconds are released (see
    `release_spread`). Those held by a lone 429's pause go together when it ends: one of them
    meeting another 429 pauses again, and the rest are accepted and end that pause. A pause
    that follows a pause with nothing accepted between (a storm) releases them spread out, so
    the first meets the next 429 and the others are held again instead of all being refused;
    so does a spent per-minute budget."""
    lone = budget.paused_until > now and budget.pause_streak <= 1
    return 0.0 if lone else wait
