"""The scheduling rules and the batch applier, without a database: rows are plain values."""

from __future__ import annotations

import pytest

from common.domain import scheduling
from common.domain.batch import BatchState
from common.domain.changes import ChangeSet, JobTasksChange, StaleTask, StoreTimings
from common.domain.events import EventType
from common.domain.kinds import BUILTIN_KINDS
from common.domain.live import LiveJob, LiveTask, Slots
from common.domain.messages import MessageKind
from common.domain.records import TaskRecord
from common.domain.scheduling import Candidate
from common.domain.states import IllegalTransition, JobStatus, TaskStatus

T = TaskStatus
NOW = 1000.0


def test_grants_go_to_the_highest_priority_then_the_oldest_task() -> None:
    candidates = [Candidate(5, "a", 2), Candidate(3, "b", 2), Candidate(9, "c", 3)]
    assert [c.task_id for c in scheduling.grant_order(candidates, 2)] == [9, 3]
    assert scheduling.grant_order(candidates, 0) == []


def test_a_task_holding_a_slot_keeps_it_and_a_full_pool_makes_others_wait() -> None:
    assert scheduling.may_take_slot(holds_slot=True, in_flight=5, capacity=5)
    assert not scheduling.may_take_slot(holds_slot=False, in_flight=5, capacity=5)
    assert scheduling.releases_slot(holds_slot=True, new=T.RETRYING)
    assert not scheduling.releases_slot(holds_slot=True, new=T.RUNNING)


def test_a_queued_job_starts_with_its_first_active_task_and_finishes_when_none_is_open() -> None:
    assert scheduling.started_status(JobStatus.QUEUED, active=True) is JobStatus.RUNNING
    assert scheduling.started_status(JobStatus.QUEUED, active=False) is None
    assert scheduling.finishes(open_tasks=0, touched=True, status=JobStatus.RUNNING)
    assert not scheduling.finishes(open_tasks=0, touched=True, status=JobStatus.COMPLETED)
    assert not scheduling.finishes(open_tasks=1, touched=True, status=JobStatus.RUNNING)


@pytest.mark.parametrize(
    ("counts", "cancelled", "status"),
    [
        ({T.SUCCEEDED: 3}, False, JobStatus.COMPLETED),
        ({T.SUCCEEDED: 2, T.FAILED: 1}, False, JobStatus.PARTIALLY_FAILED),
        ({T.FAILED: 2, T.SKIPPED: 1}, False, JobStatus.FAILED),
        ({T.SUCCEEDED: 2, T.CANCELLED: 1}, True, JobStatus.CANCELLED),
    ],
)
def test_a_finished_jobs_outcome(
    counts: dict[TaskStatus, int], cancelled: bool, status: JobStatus
) -> None:
    assert scheduling.outcome(counts, [], plural="sets", cancelled=cancelled)[0] is status


def test_the_outcome_message_names_what_is_not_done_up_to_twenty() -> None:
    _, short = scheduling.outcome(
        {T.SUCCEEDED: 1, T.FAILED: 1}, [2], plural="segments", cancelled=False
    )
    assert short == "1 of 2 segments succeeded; not done: 2"
    _, long = scheduling.outcome({T.FAILED: 30}, list(range(1, 22)), plural="sets", cancelled=False)
    assert long.endswith("not done: " + ", ".join(map(str, range(1, 21))) + "…")


# The batch applier over plain rows -----------------------------------------------------------


def _record(live: LiveTask) -> TaskRecord:
    return TaskRecord(
        id=live.id, job_id=live.job_id, index=live.index, kind=live.kind, status=live.status,
        priority=live.priority, attempt=live.attempt, max_attempts=3, payload={},
        request_id=None, handle=None, result=None, last_error="", error_class="",
        recoverable=False, worker=None, payload_hash=None, expires_at=None, history=None,
        holds_slot=live.holds_slot, poll_chain=0, deadline_at=None, next_attempt_at=None,
        started_at=None, updated_at=NOW,
    )  # fmt: skip


def _state(*tasks: LiveTask, capacity: int = 1, in_flight: int = 0) -> BatchState:
    state = BatchState(NOW, StoreTimings(stale_after=60), BUILTIN_KINDS)
    for job_id in {t.job_id for t in tasks}:
        open_tasks = sum(1 for t in tasks if t.job_id == job_id and not t.status.terminal)
        state.add_job(LiveJob(job_id, "video", JobStatus.QUEUED, open_tasks, 1, False))
    for task in tasks:
        state.add_task(task)
    state.slots = {"fal": Slots(in_flight, capacity)}
    return state


def _segment(
    task_id: int, job_id: str = "j", status: TaskStatus = T.QUEUED, **kw: object
) -> LiveTask:
    values: dict[str, object] = {"index": task_id, "attempt": 1, "holds_slot": False, "priority": 2}
    values.update(kw)
    return LiveTask(task_id, job_id, kind="video.segment", status=status, **values)  # type: ignore[arg-type]


def _cs() -> ChangeSet:
    return ChangeSet(now=NOW)


def test_starting_takes_the_free_slot_then_makes_the_next_task_wait() -> None:
    a, b = _segment(1), _segment(2)
    state = _state(a, b, capacity=1)
    first, second = _cs(), _cs()
    first.start(_record(a), message="go", deadline_at=NOW + 30)
    second.start(_record(b), message="go", deadline_at=NOW + 30)
    state.apply(first)
    state.apply(second)
    assert (first.applied[1], second.applied[2]) == (T.SUBMITTING, T.WAITING)
    assert state.slots["fal"].in_flight == 1
    assert state.updates[1]["holds_slot"] is True and state.updates[2]["deadline_at"] is None


def test_only_a_start_that_gets_its_slot_spends_the_providers_budget() -> None:
    a, b = _segment(1), _segment(2)
    state = _state(a, b, capacity=1)
    state.budgets["fal:m"] = scheduling.Budget("fal:m", rpm=2)
    first, second = _cs(), _cs()
    first.start(_record(a), message="go", deadline_at=NOW + 30, budget="fal:m", tokens=5)
    second.start(_record(b), message="go", deadline_at=NOW + 30, budget="fal:m", tokens=5)
    state.apply(first)
    state.apply(second)
    assert (first.applied[1], second.applied[2]) == (T.SUBMITTING, T.WAITING)
    # One call was made: the waiting task spends when it is handed the slot and starts.
    assert (state.budgets["fal:m"].requests, state.budgets["fal:m"].tokens) == (1, 5)


def test_a_released_slot_goes_to_the_waiting_task_of_the_higher_priority_job() -> None:
    running = _segment(1, "a", T.RUNNING, holds_slot=True)
    low, high = _segment(2, "a", T.WAITING, priority=1), _segment(3, "b", T.WAITING, priority=3)
    state = _state(running, low, high, capacity=1, in_flight=1)
    done = _cs()
    done.change(_record(running), T.SUCCEEDED, message="video ready")
    state.apply(done)
    assert state.pools_to_grant() == ["fal"]
    state.grant("fal")
    assert (high.status, high.holds_slot, low.status) == (T.QUEUED, True, T.WAITING)
    (send,) = state.sends
    assert (send.message.task_id, send.message.kind, send.boost) == (3, MessageKind.RUN, True)


def test_a_request_finished_at_the_provider_hands_its_slot_on_before_its_result() -> None:
    running = _segment(1, "a", T.RUNNING, holds_slot=True)
    waiting = _segment(2, "b", T.WAITING)
    state = _state(running, waiting, capacity=1, in_flight=1)
    finished = _cs()
    finished.note(_record(running), release_slot=True)
    state.apply(finished)
    state.grant("fal")
    assert (running.status, running.holds_slot) == (T.RUNNING, False)
    assert (waiting.status, waiting.holds_slot) == (T.QUEUED, True)
    assert state.slots["fal"].in_flight == 1
    # Its success later gives back nothing more: the slot is not released twice.
    done = _cs()
    done.change(_record(running), T.SUCCEEDED, message="video ready")
    state.apply(done)
    assert done.error is None and state.slots["fal"].in_flight == 1


def test_a_stale_change_set_is_rejected_whole_and_the_others_still_apply() -> None:
    a, b = _segment(1), _segment(2)
    state = _state(a, b, capacity=5)
    stale = _cs()
    stale.change(_record(b), T.SUBMITTING, message="fine alone")
    stale.change(_record(_segment(1, attempt=7)), T.SUBMITTING, message="read another attempt")
    fresh = _cs()
    fresh.change(_record(a), T.SUBMITTING, message="fresh")
    state.apply(stale)
    state.apply(fresh)
    assert isinstance(stale.error, StaleTask) and fresh.error is None
    assert (a.status, b.status) == (T.SUBMITTING, T.QUEUED)


def test_two_deliveries_in_one_batch_see_each_other() -> None:
    a = _segment(1)
    state = _state(a, capacity=5)
    read = _record(a)  # both deliveries read the task before either was applied
    first, duplicate = _cs(), _cs()
    for cs in (first, duplicate):
        cs.start(read, message="go", deadline_at=NOW + 30)
        state.apply(cs)
    assert first.error is None and isinstance(duplicate.error, StaleTask)
    assert state.slots["fal"].in_flight == 1


def test_an_illegal_transition_is_refused() -> None:
    a = _segment(1)
    state = _state(a)
    cs = _cs()
    cs.change(_record(a), T.RETRYING, message="a retry of nothing")
    state.apply(cs)
    assert isinstance(cs.error, IllegalTransition)


def test_jobs_start_finish_and_number_their_events() -> None:
    a, b = _segment(1, status=T.RUNNING), _segment(2, status=T.FAILED)
    state = _state(a, b, capacity=5)
    state.jobs["j"].status = JobStatus.RUNNING
    cs = _cs()
    cs.change(_record(a), T.SUCCEEDED, message="video ready")
    state.apply(cs)
    assert state.advance_jobs() == ["j"]
    (write,) = state.finish_jobs({"j": ({T.SUCCEEDED: 1, T.FAILED: 1}, [2])})
    assert write.first_seq == 2
    assert [e.type for e in write.events] == [EventType.TASK_STATUS, EventType.JOB_STATUS]
    assert write.values["status"] is JobStatus.PARTIALLY_FAILED
    assert write.values["message"] == "1 of 2 segments succeeded; not done: 2"
    assert cs.finished[0].status is JobStatus.PARTIALLY_FAILED
    assert cs.notes == {"j": 3}


def test_a_group_of_blocked_tasks_follows_its_plan() -> None:
    state = BatchState(NOW, StoreTimings(), BUILTIN_KINDS)
    state.add_job(LiveJob("s", "story", JobStatus.RUNNING, 3, 4, False))
    sets = [LiveTask(i, "s", i, "story.set", T.BLOCKED, 1, False, 2) for i in (2, 3)]
    for task in sets:
        state.add_task(task)
    state.groups[("s", "story.set", T.BLOCKED)] = [2, 3]
    cs = _cs()
    cs.change_job_tasks(
        JobTasksChange("s", "story.set", T.BLOCKED, T.QUEUED, "plan ready", send_run=True)
    )
    state.apply(cs)
    assert [t.status for t in sets] == [T.QUEUED, T.QUEUED]
    assert sorted(s.message.task_id for s in state.sends) == [2, 3]
