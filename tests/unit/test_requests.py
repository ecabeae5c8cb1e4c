"""Start requests validated into job plans (no I/O)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.domain.states import TaskKind, TaskStatus
from common.errors import InvalidArgument
from common.paths import resolve_output_dir
from services.gateway.requests import (
    Limits,
    StoryJobRequest,
    VideoJobRequest,
    plan_story_job,
    plan_video_job,
)

LIMITS = Limits(100, 50, 3, 3, "fal-ai/some/model", "gpt-4o-mini")
ARENA = "https://example.com/arena.png"


def test_video_plan_has_one_task_per_segment_with_distinct_prompts() -> None:
    plan = plan_video_job("j", VideoJobRequest(ARENA, total_segments=3, prompt="Duel"), LIMITS)
    prompts = [t.payload["arguments"]["prompt"] for t in plan.tasks]
    assert prompts == ["Duel (segment 1 of 3)", "Duel (segment 2 of 3)", "Duel (segment 3 of 3)"]
    assert all(t.payload["arguments"]["image_url"] == ARENA for t in plan.tasks)
    assert all(t.payload["model"] == "fal-ai/some/model" for t in plan.tasks)
    assert plan.max_attempts == 4


def test_unspecified_priority_is_normal_so_low_jobs_do_not_go_first() -> None:
    assert plan_video_job("j", VideoJobRequest(ARENA, 1), LIMITS).priority == 2
    assert plan_video_job("j", VideoJobRequest(ARENA, 1, priority=1), LIMITS).priority == 1


def test_explicit_prompts_and_model_arguments() -> None:
    request = VideoJobRequest(
        ARENA,
        segment_prompts=["a", "b"],
        model="owner/app",
        model_arguments={"duration": "5"},
        max_retries=1,
    )
    plan = plan_video_job("j", request, LIMITS)
    assert [t.payload["arguments"] for t in plan.tasks] == [
        {"duration": "5", "prompt": "a", "image_url": ARENA},
        {"duration": "5", "prompt": "b", "image_url": ARENA},
    ]
    assert plan.max_attempts == 2
    with pytest.raises(InvalidArgument, match="model_arguments"):
        plan_video_job("j", VideoJobRequest(ARENA, 1, model_arguments={"prompt": "x"}), LIMITS)


def test_same_request_same_fingerprint_whatever_the_key() -> None:
    a = plan_video_job("1", VideoJobRequest(ARENA, 2, idempotency_key="x"), LIMITS)
    b = plan_video_job("2", VideoJobRequest(ARENA, 2, idempotency_key="y"), LIMITS)
    c = plan_video_job("3", VideoJobRequest(ARENA, 3, idempotency_key="x"), LIMITS)
    assert a.request_hash == b.request_hash != c.request_hash


def test_story_plan_is_a_planning_task_then_blocked_sets(tmp_path: Path) -> None:
    plan = plan_story_job("j", StoryJobRequest("An idea", 25, 10), LIMITS, str(tmp_path))
    assert [(t.index, t.kind, t.status) for t in plan.tasks] == [
        (0, TaskKind.STORY_PLAN, TaskStatus.QUEUED),
        (1, TaskKind.STORY_SET, TaskStatus.BLOCKED),
        (2, TaskKind.STORY_SET, TaskStatus.BLOCKED),
        (3, TaskKind.STORY_SET, TaskStatus.BLOCKED),
    ]
    assert [t.payload for t in plan.tasks[1:]] == [
        {"first_segment": 1, "last_segment": 10},
        {"first_segment": 11, "last_segment": 20},
        {"first_segment": 21, "last_segment": 25},
    ]
    assert plan.params["output_directory"] == "j"  # defaults to the job id


@pytest.mark.parametrize("directory", ["../x", "a/../../x", "/etc", "/tmp/out", "x\x00y"])
def test_output_directory_escaping_the_root_is_refused(tmp_path: Path, directory: str) -> None:
    with pytest.raises(InvalidArgument, match="output_directory"):
        resolve_output_dir(tmp_path, directory)


def test_symlink_leading_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(InvalidArgument, match="outside the output root"):
        resolve_output_dir(root, "link")
    with pytest.raises(InvalidArgument, match="outside the output root"):
        resolve_output_dir(root, "link/deeper")
    assert resolve_output_dir(root, "fine/nested") == root.resolve() / "fine" / "nested"
    assert not (root / "fine").exists()  # checking writes nothing
