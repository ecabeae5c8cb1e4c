"""Settings from the environment, task messages on the wire, the state tables."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.domain.kinds import BUILTIN_KINDS, VIDEO_SEGMENT
from common.domain.messages import BadMessage, MessageKind, Send, TaskMessage
from common.domain.states import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_TASK,
    JobStatus,
    TaskStatus,
)
from common.routing import outgoing
from common.settings import Settings, SettingsError


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_CONCURRENCY", "lots")
    monkeypatch.setenv("GRPC_ADDR", "nowhere")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    assert "FAL_CONCURRENCY" in str(caught.value) and "GRPC_ADDR" in str(caught.value)


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "fal-secret-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    settings = Settings.from_env()
    assert "secret-value" not in repr(settings) and "secret-value" not in str(settings)
    assert sorted(settings.secrets()) == ["fal-secret-value", "sk-secret-value"]


def test_task_message_round_trip_and_garbage() -> None:
    message = TaskMessage(7, "job", MessageKind.POLL, 2, chain=3, once=True, seen="queued:4")
    assert TaskMessage.decode(message.encode()) == message
    due = TaskMessage(7, "job", MessageKind.POLL, 2, chain=3, due=1_764_000_000.125)
    assert TaskMessage.decode(due.encode()) == due
    # Defaults stay out of the body (small messages); a RUN is four fields.
    run = TaskMessage(7, "job", MessageKind.RUN, 1)
    assert run.encode() == b'{"task_id":7,"job_id":"job","kind":"run","attempt":1}'
    assert TaskMessage.decode(run.encode()) == run
    for garbage in (
        b"",
        b"[]",
        b'{"task_id": 1}',
        b'{"task_id":1,"job_id":"j","kind":"x","attempt":1}',
    ):
        with pytest.raises(BadMessage):
            TaskMessage.decode(garbage)


def test_transition_tables_are_closed_and_terminal_states_only_reopen_by_retry() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    # Terminal tasks reopen only through RetryFailed (SUCCEEDED only with `regenerate`).
    for status in TERMINAL_TASK:
        assert TASK_TRANSITIONS[status] <= {TaskStatus.QUEUED, TaskStatus.BLOCKED}
    for status in set(TaskStatus) - TERMINAL_TASK:
        assert TaskStatus.CANCELLED in TASK_TRANSITIONS[status]


def test_a_poll_that_says_when_it_is_due_is_delayed_until_then_from_publishing() -> None:
    # The first poll is decided before the request id's commit and published after it: the
    # commit's time comes off its delay instead of being added to every request's wait.
    poll = TaskMessage(7, "job", MessageKind.POLL, 1, chain=1, due=1000.0)
    send = Send(poll, VIDEO_SEGMENT.name, delay=2.0)
    assert outgoing(send, BUILTIN_KINDS, now=998.0).delay == 2.0
    assert outgoing(send, BUILTIN_KINDS, now=998.5).delay == pytest.approx(1.5)
    # ... but may still come as late as asked, where a delay tier that long saves hops.
    assert outgoing(send, BUILTIN_KINDS, now=998.5).slack == pytest.approx(0.5)
    assert outgoing(replace(send, slack=0.25), BUILTIN_KINDS, now=998.5).slack == 0.75
    assert outgoing(send, BUILTIN_KINDS, now=1001.0).delay == 0.0  # overdue: at once
    assert outgoing(send, BUILTIN_KINDS, now=997.0).delay == 2.0  # never later than asked
    assert outgoing(send, BUILTIN_KINDS).delay == 2.0  # no clock: as asked
    run = Send(TaskMessage(7, "job", MessageKind.RUN, 1), VIDEO_SEGMENT.name, delay=3.0)
    assert outgoing(run, BUILTIN_KINDS, now=998.5).delay == 3.0
