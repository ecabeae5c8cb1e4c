"""Task kinds: one spec per kind of work, and the registry every per-kind table derives from.

A task kind is what the generic machinery (store, committer, sweeper, attempt runner, gateway)
needs to know about one kind of work: which queue carries its messages, which provider it calls
and whose concurrency slots it uses, whether it is submitted then polled or done in one call,
whether it counts towards the job's outcome, the words used in messages, and its retry
defaults. Adding a kind is a new spec plus a small handler (see common.attempts); nothing else
branches on kind names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class UnknownKind(LookupError):
    """A task kind nobody registered (a bug, or a row written by a newer version)."""


@dataclass(frozen=True)
class RetryDefaults:
    """Defaults of a kind's retry settings (`<PREFIX>_MAX_RETRIES`, `<PREFIX>_BACKOFF_*`)."""

    max_retries: int = 3
    backoff_initial: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_cap: float = 30.0


@dataclass(frozen=True)
class TaskKindSpec:
    name: str
    """Stored in `tasks.kind`, e.g. "video.segment"."""
    job_kind: str
    """The kind of job whose tasks these are ("video")."""
    queue: str
    """Work queue (name after the prefix) carrying this kind's messages."""
    provider: str
    """The provider called: its circuit breaker, metrics label and log name."""
    slot_pool: str | None = None
    """Concurrency pool shared by every worker (in-flight requests at the provider); None when
    the worker's prefetch is the only bound."""
    slot_limit: int = 50
    """Default size of the pool (setting `<POOL>_CONCURRENCY`)."""
    polled: bool = False
    """True: an attempt submits a request, then poll messages follow it until it is done (the
    task is SUBMITTING during the submit). False: an attempt is one call (the task is RUNNING
    during it)."""
    produces_output: bool = True
    """Counts towards the job's outcome and progress (a story's plan does not)."""
    blocked_by: str | None = None
    """Kind of the job's task these wait for (BLOCKED until it succeeds, SKIPPED if it fails)."""
    reusable: bool = False
    """The task's payload is all of its provider input: an identical task's result may be
    reused (jobs that ask for it)."""
    noun: str = "task"
    plural: str = "tasks"
    settings_prefix: str = ""
    """Prefix of the kind's retry settings; several kinds may share one."""
    retry: RetryDefaults = field(default_factory=RetryDefaults)

    def __post_init__(self) -> None:
        if not self.name or not self.queue or not self.provider:
            raise ValueError("a task kind needs a name, a queue and a provider")
        if self.slot_pool is not None and self.slot_limit < 1:
            raise ValueError(f"{self.name}: slot_limit must be >= 1")

    @property
    def prefix(self) -> str:
        return self.settings_prefix or self.job_kind

    @property
    def in_flight_status(self) -> str:
        """Status of a task while its provider call is under way ("submitting" / "running")."""
        return "submitting" if self.polled else "running"


# A task payload's key saying its job asked to reuse identical earlier results.
REUSE = "_reuse"


def payload_hash(kind: str, payload: Mapping[str, object]) -> str:
    """The identity of a task's provider input (keys starting with "_" are ours, not input)."""
    inputs = {k: v for k, v in payload.items() if not k.startswith("_")}
    canonical = json.dumps([kind, inputs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class KindRegistry(Mapping[str, TaskKindSpec]):
    """The registered kinds, by name, and the tables derived from them."""

    def __init__(self, specs: Iterable[TaskKindSpec]) -> None:
        by_name: dict[str, TaskKindSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ValueError(f"task kind {spec.name!r} registered twice")
            by_name[spec.name] = spec
        for spec in by_name.values():
            if spec.blocked_by is not None and spec.blocked_by not in by_name:
                raise ValueError(f"{spec.name} is blocked by unknown kind {spec.blocked_by!r}")
        self._specs = MappingProxyType(by_name)
        pools: dict[str, int] = {}
        for spec in by_name.values():
            if spec.slot_pool is not None:
                pools[spec.slot_pool] = max(pools.get(spec.slot_pool, 0), spec.slot_limit)
        self.pools: Mapping[str, int] = MappingProxyType(pools)
        """Slot pool -> default limit."""
        self.queues: tuple[str, ...] = tuple(sorted({s.queue for s in by_name.values()}))
        self.output_kinds: tuple[str, ...] = tuple(
            sorted(s.name for s in by_name.values() if s.produces_output)
        )

    def __getitem__(self, name: str) -> TaskKindSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownKind(f"unknown task kind {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_kinds(self, *specs: TaskKindSpec) -> KindRegistry:
        """A new registry with `specs` added."""
        return KindRegistry([*self._specs.values(), *specs])

    def in_pool(self, pool: str) -> list[str]:
        return sorted(s.name for s in self._specs.values() if s.slot_pool == pool)

    def pool_of(self, kind: str) -> str | None:
        return self[kind].slot_pool

    def dependents(self, kind: str) -> list[str]:
        """Kinds blocked by `kind`."""
        return sorted(s.name for s in self._specs.values() if s.blocked_by == kind)

    def output_plural(self, job_kind: str) -> str:
        """What a job's output tasks are called ("segments", "sets")."""
        for spec in self._specs.values():
            if spec.job_kind == job_kind and spec.produces_output:
                return spec.plural
        return "tasks"

    def prefixes(self) -> dict[str, RetryDefaults]:
        """Settings prefix -> the retry defaults of the kinds that use it."""
        return {s.prefix: s.retry for s in self._specs.values()}


# The kinds this service ships with. -------------------------------------------------------

VIDEO_SEGMENT = TaskKindSpec(
    name="video.segment",
    job_kind="video",
    queue="video.segment",
    provider="fal",
    slot_pool="fal",
    slot_limit=50,
    polled=True,
    reusable=True,
    noun="segment",
    plural="segments",
    settings_prefix="video",
    retry=RetryDefaults(max_retries=3, backoff_initial=1.0, backoff_multiplier=2.0),
)
STORY_PLAN = TaskKindSpec(
    name="story.plan",
    job_kind="story",
    queue="story.set",
    provider="openai",
    produces_output=False,
    noun="plan",
    plural="plans",
    settings_prefix="story",
    retry=RetryDefaults(max_retries=3, backoff_initial=2.0, backoff_multiplier=2.0),
)
STORY_SET = TaskKindSpec(
    name="story.set",
    job_kind="story",
    queue="story.set",
    provider="openai",
    blocked_by="story.plan",
    noun="set",
    plural="sets",
    settings_prefix="story",
    retry=RetryDefaults(max_retries=3, backoff_initial=2.0, backoff_multiplier=2.0),
)

BUILTIN_KINDS = KindRegistry([VIDEO_SEGMENT, STORY_PLAN, STORY_SET])
