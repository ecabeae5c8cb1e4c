"""SQLite work in one trip: a synchronous engine used on a thread of its own.

aiosqlite runs each statement on its thread and hands every result back through the event
loop (begin, each statement's execute and fetch, commit, the pool's reset), so a transaction of
a dozen statements waits a dozen times for a loop that is also serving the broker, the provider
calls and the watchers. Measured: a group-commit batch in the video worker then took 19 ms on
average (p99 90 ms), most of it waiting for its turn; the gateway's feed reads 10-100 ms.
Through `SqliteThread` the whole transaction is a single hand-off to the thread and a single
wake-up back.

The store's batch code stays written once, against an async connection: `SyncConnection`
answers each of its awaits at once from a synchronous connection, so the coroutine finishes in
one step on the thread (`run_to_end`).

One thread, one connection: SQLite has one writer anyway, and a pysqlite connection stays on
the thread that made it. Context variables (the trace) go with each call.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL

T = TypeVar("T")


class SyncConnection:
    """The async connection methods the store uses, answered by a synchronous connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.scalar(statement, parameters)

    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.scalars(statement, parameters)


def run_to_end(step: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that awaits nothing but a `SyncConnection` to its end, here and now."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("a threaded store step awaited something besides its connection")


class SqliteThread:
    """A synchronous engine of one connection on the SQLite file at `url`, used only on one
    dedicated thread; `tune` sets up its connections (pragmas, how BEGIN is issued).
    `transactions=False`: `tune` issues no BEGIN, so only `read` (one statement) is offered."""

    def __init__(
        self, url: URL, tune: Callable[[Engine], None], name: str, *, transactions: bool = True
    ) -> None:
        self.engine = create_engine(
            url.set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0, pool_timeout=60
        )
        tune(self.engine)
        self.transactions = transactions
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on the thread (it uses `engine` as it likes)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, context.run, work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` on the thread, outside any transaction of ours (a single statement
        on an engine tuned with `begin=False` is its own transaction)."""

        def read() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return await self.run(read)

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` in one transaction on the thread: committed when it returns, rolled
        back when it raises."""
        if not self.transactions:
            raise RuntimeError("this thread's engine issues no BEGIN: work there is not atomic")

        def transaction() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return await self.run(transaction)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=True)
