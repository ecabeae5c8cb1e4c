"""A worker process's lease: proof, renewed every few seconds, that it is alive.

A task in the middle of a provider call names the worker making it. When RabbitMQ redelivers
that task's message (its worker's connection dropped), the worker that receives it looks at the
lease: expired means the worker died, and the call is made again at once, instead of after the
task's deadline (which must outlast the slowest provider call); alive means the worker is still
at it (only its connection dropped), and the message is looked at again once the lease would
have run out. A live worker renews long before its lease ends, so two live workers never make
one attempt's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Self

from common.store import leases
from common.store.database import Database

log = logging.getLogger(__name__)


class WorkerLease:
    def __init__(
        self,
        db: Database,
        queue: str,
        *,
        seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.queue = queue
        self.seconds = seconds
        self.clock = clock
        self.id = f"{queue}-{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._renew()
        self._task = asyncio.create_task(self._heartbeat(), name=f"lease-{self.id}")
        log.info("worker %s holds its lease", self.id, extra={"event": "session"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with self.db.write() as session:
                await leases.release(session, self.id)
        except Exception:  # the database is away: the lease simply runs out
            log.warning("could not release lease %s", self.id, exc_info=True)

    async def _renew(self) -> None:
        now = self.clock()
        async with self.db.write() as session:
            await leases.renew(session, self.id, self.queue, now=now, until=now + self.seconds)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                await self._renew()
            except Exception:
                log.warning("renewing lease %s failed", self.id, exc_info=True)

    async def remaining(self, worker_id: str | None) -> float:
        """Seconds left on `worker_id`'s lease (0: expired, unknown or none)."""
        if not worker_id:
            return 0.0
        if worker_id == self.id:
            return self.seconds
        async with self.db.read() as session:
            until = await leases.lease_until(session, worker_id)
        return 0.0 if until is None else max(0.0, until - self.clock())
