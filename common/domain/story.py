"""A story job's generation summary and retry info, as the seed reported them.

Computed from the task rows; used by the gateway (GetJob, seed HTTP) and by the story worker
(the metadata file), so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from common.domain.states import TaskKind, TaskStatus


class _TaskRow(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def result(self) -> dict[str, Any] | None: ...


def story_summary(
    tasks: Iterable[_TaskRow],
    *,
    total_segments: int,
    finished: bool,
    retry_history: list[Any],
) -> dict[str, Any]:
    sets = sorted((t for t in tasks if t.kind == TaskKind.STORY_SET), key=lambda t: t.index)
    succeeded = [t for t in sets if t.status == TaskStatus.SUCCEEDED]
    failed = [
        t.index for t in sets if t.status != TaskStatus.SUCCEEDED and TaskStatus(t.status).terminal
    ]
    return {
        "generation_summary": {
            "total_segments_requested": total_segments,
            "total_segments_generated": sum(
                int((t.result or {}).get("segments_count", 0)) for t in succeeded
            ),
            "total_sets_requested": len(sets),
            "successful_sets": len(succeeded),
            "failed_sets": len(failed),
            "failed_set_numbers": failed,
        },
        "retry_info": {
            "can_retry": finished and bool(failed),
            "failed_sets": failed,
            "retry_history": list(retry_history),
        },
    }
