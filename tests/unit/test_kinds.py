"""The kind registry and the tables and settings derived from it."""

from __future__ import annotations

import pytest

from common.broker import Topology
from common.domain.kinds import BUILTIN_KINDS, TaskKindSpec, UnknownKind
from common.settings import Settings, SettingsError
from tests.support.toy_kind import TOY, TOY_KINDS


def test_the_builtin_tables_derive_from_the_specs() -> None:
    assert BUILTIN_KINDS.queues == ("story.set", "video.segment")
    assert dict(BUILTIN_KINDS.pools) == {"fal": 50}
    assert BUILTIN_KINDS.output_kinds == ("story.set", "video.segment")
    assert BUILTIN_KINDS.dependents("story.plan") == ["story.set"]
    assert BUILTIN_KINDS.output_plural("story") == "sets"
    assert BUILTIN_KINDS["video.segment"].in_flight_status == "submitting"
    assert BUILTIN_KINDS["story.set"].in_flight_status == "running"
    with pytest.raises(UnknownKind):
        BUILTIN_KINDS["image.frame"]


def test_a_registered_kind_brings_its_queue_pool_and_words() -> None:
    assert "toy.echo" in TOY_KINDS.queues and "toy.echo" not in BUILTIN_KINDS.queues
    assert TOY_KINDS.pools["echo"] == 2 and TOY_KINDS.in_pool("echo") == ["toy.echo"]
    assert TOY_KINDS.output_plural("toy") == "echoes"
    assert Topology(queues=TOY_KINDS.queues).work_queue("toy.echo") == "orchestrator.toy.echo"


def test_a_registry_refuses_duplicates_and_unknown_blockers() -> None:
    with pytest.raises(ValueError, match="twice"):
        TOY_KINDS.with_kinds(TOY)
    orphan = TaskKindSpec("x.y", "x", "x.y", "p", blocked_by="nothing.here")
    with pytest.raises(ValueError, match="unknown kind"):
        BUILTIN_KINDS.with_kinds(orphan)


def test_kind_settings_come_from_the_prefix_with_the_specs_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOY_MAX_RETRIES", "7")
    monkeypatch.setenv("ECHO_CONCURRENCY", "9")
    settings = Settings.from_env(kinds=TOY_KINDS, video_backoff_cap=12)
    assert settings.max_retries("toy.echo") == 7
    assert settings.pool_limit("echo") == 9
    toy = settings.retry_policy("toy.echo").backoff
    assert (toy.initial, toy.cap) == (TOY.retry.backoff_initial, TOY.retry.backoff_cap)
    assert settings.retry_policy("video.segment").backoff.cap == 12
    # story.plan and story.set share the STORY_ prefix.
    assert settings.retry_policy("story.plan") == settings.retry_policy("story.set")
    assert settings.topology.queues == TOY_KINDS.queues


def test_a_bad_kind_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_BACKOFF_MULTIPLIER", "0.5")
    monkeypatch.setenv("STORY_MAX_RETRIES", "eleven")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(kinds=TOY_KINDS)
    assert "TOY_BACKOFF_MULTIPLIER" in str(caught.value)
    assert "STORY_MAX_RETRIES" in str(caught.value)
