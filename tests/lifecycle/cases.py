"""The kinds the lifecycle contract suite runs: every built-in kind, and the toy kind that
lives only in tests/support."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.committer import GroupCommitter
from common.domain.kinds import BUILTIN_KINDS, STORY_PLAN, STORY_SET, VIDEO_SEGMENT
from common.domain.records import StoryParams, VideoParams
from common.domain.states import TaskStatus
from common.store.jobs import NewJob, NewTask
from services.story_worker.files import StoryFiles
from services.story_worker.kinds import StoryPlans, StorySets
from services.video_worker.segments import VideoSegments
from tests.support.fakes import FakeStoryProvider, FakeVideoProvider
from tests.support.lifecycle import KindCase
from tests.support.toy_kind import TOY, TOY_KINDS, Echoes, EchoProvider, toy_job

MODEL = "fal-ai/fake/video"
SEGMENTS_PER_SET = 2


def _video_job(job_id: str, n: int) -> NewJob:
    arena = "https://example.com/arena.png"
    return NewJob(
        id=job_id,
        kind="video",
        priority=2,
        idempotency_key=None,
        request_hash=job_id,
        params=VideoParams(arena, MODEL, n).to_json(),
        max_attempts=3,
        tasks=[
            NewTask(
                i,
                VIDEO_SEGMENT.name,
                {"model": MODEL, "arguments": {"prompt": f"shot {i}", "image_url": arena}},
            )
            for i in range(1, n + 1)
        ],
        plural=VIDEO_SEGMENT.plural,
    )


def _story_params(sets: int) -> dict[str, Any]:
    return StoryParams(
        idea="a fake expedition",
        total_segments=sets * SEGMENTS_PER_SET,
        segments_per_set=SEGMENTS_PER_SET,
        total_sets=sets,
        save_to_files=True,
        output_directory="lifecycle",
        model="gpt-fake",
    ).to_json()


def _plan_job(job_id: str, n: int) -> NewJob:
    """N plan tasks and nothing that waits for them (the suite's jobs are of one kind)."""
    return NewJob(
        id=job_id,
        kind="story",
        priority=2,
        idempotency_key=None,
        request_hash=job_id,
        params=_story_params(1),
        max_attempts=3,
        tasks=[NewTask(i, STORY_PLAN.name, {}) for i in range(n)],
        plural=STORY_SET.plural,
    )


def _set_job(job_id: str, n: int) -> NewJob:
    """N sets of a story whose plan is already fixed."""
    plan = {
        "title": "The Fake Expedition",
        "logline": "Two friends cross a fake desert.",
        "genre": "adventure",
        "characters": [
            {"name": "Ada", "role": "lead", "description": "a careful navigator"},
            {"name": "Bo", "role": "friend", "description": "a reckless optimist"},
        ],
        "outline": [f"beat {b}" for b in range(1, n * SEGMENTS_PER_SET + 1)],
        "metadata_file": "",
    }
    return NewJob(
        id=job_id,
        kind="story",
        priority=2,
        idempotency_key=None,
        request_hash=job_id,
        params=_story_params(n),
        max_attempts=3,
        tasks=[
            NewTask(
                i,
                STORY_SET.name,
                {
                    "first_segment": (i - 1) * SEGMENTS_PER_SET + 1,
                    "last_segment": i * SEGMENTS_PER_SET,
                },
                TaskStatus.QUEUED,
            )
            for i in range(1, n + 1)
        ],
        plural=STORY_SET.plural,
        meta=plan,
    )


def _story_handler(kind: type[StoryPlans] | type[StorySets]) -> Any:
    def make(committer: GroupCommitter, fake: Any, tmp_path: Path) -> Any:
        return kind(committer, fake, StoryFiles(tmp_path / "output"))

    return make


CASES = [
    KindCase(
        "video.segment",
        VIDEO_SEGMENT,
        BUILTIN_KINDS,
        lambda: FakeVideoProvider(polls=1),
        lambda _committer, fake, _tmp: VideoSegments(fake),
        _video_job,
    ),
    KindCase(
        "story.plan",
        STORY_PLAN,
        BUILTIN_KINDS,
        FakeStoryProvider,
        _story_handler(StoryPlans),
        _plan_job,
    ),
    KindCase(
        "story.set",
        STORY_SET,
        BUILTIN_KINDS,
        FakeStoryProvider,
        _story_handler(StorySets),
        _set_job,
    ),
    KindCase(
        "toy.echo",
        TOY,
        TOY_KINDS,
        lambda: EchoProvider(polls=1),
        lambda _committer, fake, _tmp: Echoes(fake),
        toy_job,
    ),
]
