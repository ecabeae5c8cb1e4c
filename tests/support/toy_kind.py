"""A third task kind, defined only here: a polled "echo" provider with its own slot pool.

It exists to prove that a new kind is one spec and one small handler: the lifecycle contract
suite (tests/lifecycle) runs it exactly like the built-in kinds, with nothing in common/ or
services/ knowing about it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from common.attempts.kind import (
    KindHandler,
    Pending,
    ProviderCalls,
    RequestFailed,
    Submitted,
    Succeeded,
    Work,
)
from common.domain.kinds import BUILTIN_KINDS, RetryDefaults, TaskKindSpec
from common.store.jobs import NewJob, NewTask
from tests.support.fakes import Script

TOY = TaskKindSpec(
    name="toy.echo",
    job_kind="toy",
    queue="toy.echo",
    provider="echo",
    slot_pool="echo",
    slot_limit=2,
    polled=True,
    noun="echo",
    plural="echoes",
    settings_prefix="toy",
    retry=RetryDefaults(max_retries=2, backoff_initial=0.01, backoff_cap=0.05),
)
TOY_KINDS = BUILTIN_KINDS.with_kinds(TOY)


class EchoProvider:
    """The toy provider: echoes a text back after `polls` status checks."""

    def __init__(self, *, polls: int = 1) -> None:
        self.script = Script("echo")
        self.polls = polls
        self.calls: Counter[str] = Counter()
        self.texts: dict[str, str] = {}
        self.checked: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self._ids = itertools.count(1)

    async def send(self, text: str) -> str:
        self.calls["send"] += 1
        await self.script.next()
        request_id = f"echo-{next(self._ids)}"
        self.texts[request_id] = text
        return request_id

    async def ask(self, request_id: str) -> str | None:
        """The echo once ready; None before."""
        self.calls["ask"] += 1
        self.checked[request_id] += 1
        return self.texts[request_id] if self.checked[request_id] > self.polls else None

    async def cancel(self, request_id: str) -> None:
        self.calls["cancel"] += 1
        self.cancelled.append(request_id)

    @property
    def paid(self) -> int:
        return self.calls["send"]


class Echoes(KindHandler):
    spec = TOY

    def __init__(self, provider: EchoProvider) -> None:
        self.provider = provider

    async def submit(self, work: Work, calls: ProviderCalls) -> Submitted:
        text = str(work.task.payload["text"])
        return Submitted(await calls("send", lambda: self.provider.send(text)), {"text": text})

    async def check(
        self, work: Work, calls: ProviderCalls, *, notified: bool
    ) -> Pending | Succeeded | RequestFailed:
        request_id = work.task.request_id or ""
        echo = await calls("ask", lambda: self.provider.ask(request_id))
        if echo is None:
            return Pending("waiting", "the echo is on its way")
        return Succeeded({"echo": echo}, f"echoed {echo!r}")

    async def cancel(self, work: Work, calls: ProviderCalls) -> bool:
        request_id = work.task.request_id or ""
        await calls("cancel", lambda: self.provider.cancel(request_id))
        return True


def toy_job(job_id: str, n: int, **_: Any) -> NewJob:
    return NewJob(
        id=job_id,
        kind="toy",
        priority=2,
        idempotency_key=None,
        request_hash=job_id,
        params={"texts": n},
        max_attempts=1 + TOY.retry.max_retries,
        tasks=[NewTask(i, TOY.name, {"text": f"hello {i}"}) for i in range(1, n + 1)],
        plural=TOY.plural,
    )
