"""Service processes for end-to-end tests: `python -m services.<name>` with its own environment.

Logs are collected so a failing test can show them; readiness is awaited on a log line, never
by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One service process; `start()` waits until its log shows `ready`."""

    def __init__(self, name: str, env: Mapping[str, str], ready: str) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.ready = re.compile(ready)
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seen_ready = asyncio.Event()

    async def start(self, timeout: float = 30.0) -> None:
        self._seen_ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.name}",
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        waiter = asyncio.create_task(self._seen_ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait(
            {waiter, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        exited.cancel()
        if waiter not in done:
            raise RuntimeError(f"{self.name} did not become ready:\n{self.log()}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self.ready.search(line):
                self._seen_ready.set()

    async def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                await asyncio.sleep(0.05)

    def log(self) -> str:
        return "\n".join(f"  [{self.name}] {line}" for line in self.lines[-200:])

    async def kill(self) -> None:
        """SIGKILL: no draining, no clean-up — as a crash."""
        await self._signal(signal.SIGKILL)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        return await self._signal(signal.SIGTERM, timeout)

    async def _signal(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.proc = None
        return code
