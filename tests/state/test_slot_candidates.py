"""The waiting tasks a freed provider slot may go to: each job's oldest WAITING tasks of the
pool's kinds, every job with one found, tasks the batch already holds left out."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select, update

from common.domain.states import TaskKind, TaskStatus
from common.store import slots
from common.store.database import Database
from common.store.tables import Task
from tests.state.test_store import create, video_job

VIDEO = (TaskKind.VIDEO_SEGMENT.value,)


async def _job(db: Database, job_id: str, n: int) -> list[int]:
    """A video job of `n` segments, every task WAITING; their ids."""
    await create(db, video_job(job_id, n))
    async with db.write() as session:
        await session.execute(
            update(Task).where(Task.job_id == job_id).values(status=TaskStatus.WAITING)
        )
        return list(await session.scalars(select(Task.id).where(Task.job_id == job_id)))


async def _candidates(db: Database, per_job: int, exclude: list[int]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    async with db.read() as session:
        rows = await session.execute(
            slots.oldest_waiting(VIDEO, session.get_bind().dialect.name),
            {"per_job": per_job, "exclude": exclude},
        )
        for task_id, job_id in rows:
            found[job_id].append(task_id)
    return {job_id: sorted(ids) for job_id, ids in found.items()}


async def test_each_job_gives_its_oldest_waiting_tasks(db: Database) -> None:
    ids = {name: await _job(db, name, n) for name, n in (("a", 9), ("b", 2), ("c", 5))}
    ids |= {name: await _job(db, name, 3) for name in ("d", "e", "f")}
    async with db.write() as session:
        # Not WAITING any more (granted, finished): never candidates.
        await session.execute(
            update(Task)
            .where(Task.id.in_([ids["a"][0], ids["c"][1], *ids["e"]]))
            .values(status=TaskStatus.QUEUED)
        )
        # Another pool's kind.
        await session.execute(
            update(Task).where(Task.id == ids["b"][1]).values(kind=TaskKind.STORY_SET)
        )
    held = [ids["a"][1], ids["d"][0], *ids["f"]]  # already in the batch
    assert await _candidates(db, 3, held) == {
        "a": ids["a"][2:5],
        "b": ids["b"][:1],
        "c": [ids["c"][0], *ids["c"][2:4]],
        "d": ids["d"][1:],
    }
    assert await _candidates(db, 1, []) == {
        "a": [ids["a"][1]],
        "b": [ids["b"][0]],
        "c": [ids["c"][0]],
        "d": [ids["d"][0]],
        "f": [ids["f"][0]],
    }


async def test_no_waiting_task_no_job(db: Database) -> None:
    await _job(db, "a", 2)
    async with db.write() as session:
        await session.execute(update(Task).values(status=TaskStatus.SUCCEEDED))
    assert await _candidates(db, 5, []) == {}
