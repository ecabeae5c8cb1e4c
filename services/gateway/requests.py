"""Start requests as the gateway's edges hand them over, validated into job plans.

gRPC and the seed-compatible HTTP API both build a `VideoJobRequest` / `StoryJobRequest` and call
`plan_video_job` / `plan_story_job`. Validation (by the shared checks in `fields`) happens
before anything is written; a bad field raises InvalidArgument naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from common.domain.kinds import REUSE, STORY_PLAN, STORY_SET, VIDEO_SEGMENT, payload_hash
from common.domain.records import StoryParams, VideoParams
from common.domain.states import JobKind, TaskStatus
from common.errors import InvalidArgument
from common.paths import resolve_output_dir
from common.store.jobs import NewJob, NewTask
from services.gateway.fields import (
    UrlPolicy,
    check_fal_model,
    check_key,
    check_model_arguments,
    check_openai_model,
    check_text,
    check_url,
)

MAX_PROMPT = 2000
MAX_IDEA = 4000
MAX_RETRIES = 10
MAX_DEADLINE_SECONDS = 7 * 24 * 3600
DEFAULT_SEGMENTS_PER_SET = 10
MAX_SEGMENTS_PER_SET = 50
DEFAULT_VIDEO_PROMPT = "An epic battle unfolds in the arena"
# Priority as in the proto: 0 unspecified (normal), 1 low, 2 normal, 3 high.
PRIORITIES = range(4)
NORMAL = 2


@dataclass(frozen=True)
class Limits:
    max_video_segments: int
    max_story_segments: int
    video_max_retries: int
    story_max_retries: int
    default_video_model: str
    default_story_model: str
    urls: UrlPolicy = field(default_factory=UrlPolicy)
    fal_models: frozenset[str] = frozenset()
    openai_models: frozenset[str] = frozenset()
    # Provider slots one job may hold (0: no cap but the pool's), and the largest pool.
    max_job_concurrency: int = 0
    max_pool: int = 10_000


@dataclass(frozen=True)
class VideoJobRequest:
    battle_arena_url: str
    total_segments: int = 0
    prompt: str = ""
    segment_prompts: list[str] = field(default_factory=list)
    model: str = ""
    idempotency_key: str = ""
    priority: int = 0
    model_arguments: dict[str, Any] = field(default_factory=dict)
    max_retries: int = 0
    max_concurrency: int = 0
    deadline_seconds: int = 0
    reuse_results: bool = False


@dataclass(frozen=True)
class StoryJobRequest:
    idea: str
    total_segments: int
    segments_per_set: int = 0
    save_to_files: bool = False
    output_directory: str = ""
    model: str = ""
    idempotency_key: str = ""
    priority: int = 0
    max_retries: int = 0
    max_concurrency: int = 0
    deadline_seconds: int = 0


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be between {low} and {high}, got {value}")
    return value


def _common(idempotency_key: str, priority: int, max_retries: int) -> None:
    check_key(idempotency_key)
    if priority not in PRIORITIES:
        raise InvalidArgument("priority", f"unknown priority {priority} (0..3)")
    check_range("max_retries", max_retries, 0, MAX_RETRIES)


def _cap(requested: int, limits: Limits) -> int:
    """A job's slot cap: what it asks, never above the server's (0: the server's)."""
    check_range("max_concurrency", requested, 0, limits.max_pool)
    server = limits.max_job_concurrency
    if server and (requested == 0 or requested > server):
        return server
    return requested


def _no_cap(requested: int) -> int:
    """Story calls hold no provider slots (a worker runs at most STORY_PREFETCH at once): a
    slot cap would silently do nothing, so it is refused."""
    if requested:
        raise InvalidArgument("max_concurrency", "story jobs hold no provider slots; leave it 0")
    return 0


def _deadline(seconds: int, now: float) -> float | None:
    check_range("deadline_seconds", seconds, 0, MAX_DEADLINE_SECONDS)
    return now + seconds if seconds else None


def _fingerprint(kind: JobKind, request: Any) -> str:
    body = {k: v for k, v in asdict(request).items() if k != "idempotency_key"}
    canonical = json.dumps({"kind": kind, **body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_video_job(
    job_id: str, r: VideoJobRequest, limits: Limits, *, owner: str = "", now: float = 0.0
) -> NewJob:
    arena = check_url("battle_arena_url", r.battle_arena_url, limits.urls)
    _common(r.idempotency_key, r.priority, r.max_retries)
    if r.segment_prompts:
        n = len(r.segment_prompts)
        check_range("segment_prompts", n, 1, limits.max_video_segments)
        if r.total_segments not in (0, n):
            raise InvalidArgument(
                "total_segments", f"is {r.total_segments} but {n} segment_prompts were given"
            )
        for i, p in enumerate(r.segment_prompts):
            check_text(f"segment_prompts[{i}]", p, max_chars=MAX_PROMPT, required=True, blank=False)
        prompts = list(r.segment_prompts)
    else:
        n = r.total_segments
        check_range("total_segments", n, 1, limits.max_video_segments)
        check_text("prompt", r.prompt, max_chars=MAX_PROMPT)
        base = r.prompt.strip() or DEFAULT_VIDEO_PROMPT
        prompts = [f"{base} (segment {i} of {n})" for i in range(1, n + 1)]
    model = check_fal_model(r.model or limits.default_video_model, limits.fal_models)
    arguments = check_model_arguments(r.model_arguments)
    for reserved in ("prompt", "image_url"):
        if reserved in arguments:
            raise InvalidArgument(
                "model_arguments", f"{reserved!r} is set by the orchestrator per segment"
            )
    tasks = []
    for i, p in enumerate(prompts, start=1):
        payload: dict[str, Any] = {
            "model": model,
            "arguments": {**arguments, "prompt": p, "image_url": arena},
        }
        digest = payload_hash(VIDEO_SEGMENT.name, payload)
        if r.reuse_results:
            payload[REUSE] = True
        tasks.append(NewTask(i, VIDEO_SEGMENT.name, payload, payload_hash=digest))
    return NewJob(
        id=job_id,
        kind=JobKind.VIDEO,
        priority=r.priority or NORMAL,
        idempotency_key=r.idempotency_key or None,
        request_hash=_fingerprint(JobKind.VIDEO, r),
        params=VideoParams(arena, model, n).to_json(),
        max_attempts=1 + (r.max_retries or limits.video_max_retries),
        tasks=tasks,
        plural=VIDEO_SEGMENT.plural,
        owner=owner,
        max_concurrency=_cap(r.max_concurrency, limits),
        deadline_at=_deadline(r.deadline_seconds, now),
        reuse_results=r.reuse_results,
    )


def plan_story_job(
    job_id: str,
    r: StoryJobRequest,
    limits: Limits,
    output_root: str,
    *,
    owner: str = "",
    now: float = 0.0,
) -> NewJob:
    check_text("idea", r.idea, max_chars=MAX_IDEA, required=True, blank=False)
    idea = r.idea.strip()
    check_range("total_segments", r.total_segments, 1, limits.max_story_segments)
    per_set = r.segments_per_set or DEFAULT_SEGMENTS_PER_SET
    check_range("segments_per_set", per_set, 1, MAX_SEGMENTS_PER_SET)
    _common(r.idempotency_key, r.priority, r.max_retries)
    model = check_openai_model(r.model or limits.default_story_model, limits.openai_models)
    directory = r.output_directory or job_id
    # Checked even when nothing is saved: a request that names a folder escaping the output
    # root is wrong either way.
    resolve_output_dir(output_root, directory)
    sets = math.ceil(r.total_segments / per_set)
    tasks = [NewTask(index=0, kind=STORY_PLAN.name, payload={})]
    for number in range(1, sets + 1):
        first = (number - 1) * per_set + 1
        last = min(number * per_set, r.total_segments)
        tasks.append(
            NewTask(
                index=number,
                kind=STORY_SET.name,
                payload={"first_segment": first, "last_segment": last},
                status=TaskStatus.BLOCKED,
            )
        )
    return NewJob(
        id=job_id,
        kind=JobKind.STORY,
        priority=r.priority or NORMAL,
        idempotency_key=r.idempotency_key or None,
        request_hash=_fingerprint(JobKind.STORY, r),
        params=StoryParams(
            idea=idea,
            total_segments=r.total_segments,
            segments_per_set=per_set,
            total_sets=sets,
            save_to_files=r.save_to_files,
            output_directory=directory,
            model=model,
        ).to_json(),
        max_attempts=1 + (r.max_retries or limits.story_max_retries),
        tasks=tasks,
        plural=STORY_SET.plural,
        owner=owner,
        max_concurrency=_no_cap(r.max_concurrency),
        deadline_at=_deadline(r.deadline_seconds, now),
    )
