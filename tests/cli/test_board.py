"""The live display's model, without a terminal: rows from a snapshot, then from events."""

from __future__ import annotations

from google.protobuf.struct_pb2 import Struct
from orchestrator.v1 import jobs_pb2 as pb

from services.cli.board import Board, Tone


def event(cursor: int, **fields: object) -> pb.JobEvent:
    details = Struct()
    details.update(dict(fields.pop("details", {})))
    return pb.JobEvent(cursor=cursor, details=details, **fields)


def snapshot(last_cursor: int, *tasks: pb.Task) -> pb.Job:
    return pb.Job(
        id="j", kind=pb.JOB_KIND_VIDEO, status=pb.JOB_STATUS_RUNNING, total_tasks=len(tasks),
        last_cursor=last_cursor, tasks=list(tasks),
    )  # fmt: skip


def test_events_after_the_snapshot_update_rows_older_ones_only_log() -> None:
    board = Board("j")
    board.load(
        snapshot(
            5,
            pb.Task(index=1, status=pb.TASK_STATUS_SUCCEEDED, attempts=1, max_attempts=4),
            pb.Task(index=2, status=pb.TASK_STATUS_RUNNING, attempts=2, max_attempts=4),
        )
    )
    old = board.apply(
        event(3, type=pb.EVENT_TYPE_TASK_STATUS, task_index=1,
              task_status=pb.TASK_STATUS_RETRYING, message="attempt 1 failed",
              details={"attempt": 2, "error": "boom"})
    )  # fmt: skip
    assert old is not None and old.tone is Tone.WARN and "segment 1" in old.text
    assert board.rows[1].status == pb.TASK_STATUS_SUCCEEDED  # the snapshot is newer

    retry = board.apply(
        event(6, type=pb.EVENT_TYPE_TASK_STATUS, task_index=2,
              task_status=pb.TASK_STATUS_RETRYING, error_class=pb.ERROR_CLASS_SERVER_ERROR,
              details={"attempt": 3, "error": "POST /x -> 503: busy"})
    )  # fmt: skip
    assert retry is not None and retry.text.startswith("↻ retry")
    row = board.rows[2]
    assert (row.status, row.attempts, row.error_class) == (
        pb.TASK_STATUS_RETRYING,
        2,  # the RETRYING event names the attempt to come
        "server_error",
    )
    done = board.apply(
        event(7, type=pb.EVENT_TYPE_TASK_STATUS, task_index=2,
              task_status=pb.TASK_STATUS_SUCCEEDED, details={"attempt": 3, "result_url": "u"})
    )  # fmt: skip
    assert done is None  # successes show in the table, not the log
    assert (board.rows[2].attempts, board.rows[2].result) == (3, "u")
    assert board.finished_tasks == 2 and board.last_cursor == 7


def test_breaker_sets_and_clears_the_warning() -> None:
    board = Board("j")
    board.load(snapshot(0))
    opened = board.apply(
        event(1, type=pb.EVENT_TYPE_BREAKER, task_index=-1, message="fal circuit open",
              details={"state": "open"})
    )  # fmt: skip
    assert opened is not None and opened.tone is Tone.WARN
    assert board.warning == "fal circuit open"
    closed = board.apply(
        event(2, type=pb.EVENT_TYPE_BREAKER, task_index=-1, message="closed",
              details={"state": "closed"})
    )  # fmt: skip
    assert closed is not None and closed.tone is Tone.GOOD and board.warning == ""


def test_story_plan_is_not_counted_and_large_jobs_show_the_telling_rows() -> None:
    board = Board("s", kind=pb.JOB_KIND_STORY, total_tasks=2)
    board.load(
        pb.Job(
            id="s", kind=pb.JOB_KIND_STORY, total_tasks=2,
            tasks=[pb.Task(index=0, status=pb.TASK_STATUS_SUCCEEDED),
                   pb.Task(index=1, status=pb.TASK_STATUS_QUEUED),
                   pb.Task(index=2, status=pb.TASK_STATUS_QUEUED)],
        )
    )  # fmt: skip
    assert board.finished_tasks == 0 and board.label(0) == "plan" and board.label(2) == "set 2"

    big = Board("v")
    big.load(
        snapshot(
            0,
            *[pb.Task(index=i, status=pb.TASK_STATUS_SUCCEEDED) for i in range(1, 99)],
            pb.Task(index=99, status=pb.TASK_STATUS_FAILED),
            pb.Task(index=100, status=pb.TASK_STATUS_RETRYING),
        )
    )
    rows, left = big.visible_rows(3)
    assert [r.index for r in rows] == [1, 99, 100]
    assert left == {"succeeded": 97}
