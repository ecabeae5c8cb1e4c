"""Child processes of the benchmark: started with their own environment, logs to a file.

Output goes to one file per process (never a pipe, so a chatty child can never block on a full
pipe buffer); readiness is a probe (an HTTP health check, a consumer on a queue), because the
services run at LOG_LEVEL=WARNING and so never print their INFO "ready" lines. Stopping is
SIGTERM to the process, then SIGKILL to its process group after a bound.

Each child gets its own session, so a Ctrl-C reaches only the benchmark, which then stops its
children in order; `kill_survivors()` is the last resort after the event loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Probe = Callable[[], Awaitable[bool]]

# Every child started and not yet reaped, for `kill_survivors`.
_LIVE: set[ChildProcess] = set()


class Pinning:
    """`--pin`: the cores this benchmark and every process it starts may run on (None: any).

    Set once by `pin_benchmark` before anything is started; children inherit the affinity of
    the thread that forks them, and `ChildProcess.start` checks each child's process tree.
    """

    cores: frozenset[int] | None = None
    # Processes found with another affinity (and pinned then): should stay empty.
    repinned: list[str] = []


def pin_benchmark(cores: set[int]) -> None:
    """Pin every thread of this process to `cores` (as `taskset -c`); children inherit it."""
    Pinning.cores = frozenset(cores)
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cores)


def check_pinned(name: str, pid: int) -> None:
    """Make sure `pid` and its descendants run on the pinned cores (a no-op when unpinned)."""
    cores = Pinning.cores
    if cores is None:
        return
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.sched_getaffinity(member) != cores:
                os.sched_setaffinity(member, cores)
                Pinning.repinned.append(f"{name}:{member}")


def kill_survivors() -> list[str]:
    """SIGKILL the process group of every child still alive; their names."""
    killed = []
    for child in list(_LIVE):
        if child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            killed.append(child.name)
    _LIVE.clear()
    return killed


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def _proc_status(pid: int) -> dict[str, str]:
    """`/proc/<pid>/status` as a dict (empty when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reaped_children_seconds(pid: int) -> float:
    """CPU seconds of the children `pid` has waited for (cutime + cstime)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / _TICKS


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid`, every live descendant, and the children it reaped
    (None when `pid` is gone): e.g. a Celery worker with its prefork pool."""
    own = _cpu_seconds(pid)
    if own is None:
        return None
    others = (_cpu_seconds(child) for child in descendants(pid))
    return own + _reaped_children_seconds(pid) + sum(s for s in others if s is not None)


class ChildProcess:
    """One child process (`python -m <module>` or any argv) with a log file and a probe."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        probe: Probe,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.probe = probe
        self.proc: asyncio.subprocess.Process | None = None

    @classmethod
    def module(
        cls, name: str, module: str, env: Mapping[str, str], log_dir: Path, probe: Probe
    ) -> ChildProcess:
        """`python -m module` with the benchmark's interpreter."""
        return cls(name, [sys.executable, "-m", module], env, log_dir, probe)

    async def start(self, ready_within: float = 60.0) -> None:
        """Start the process and wait until its probe says ready (or it exits: RuntimeError)."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")
            try:
                if await self.probe():
                    # Ready: any pool it forks (Celery's prefork children) exists by now.
                    await asyncio.to_thread(check_pinned, self.name, self.proc.pid)
                    return
            except Exception:  # any failure of the probe means "not yet"
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {ready_within:.0f}s\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"  [{self.name}] {line}" for line in _tail(self.log_path, lines))

    async def peak_rss_mb(self) -> float | None:
        """Peak resident set size so far (VmHWM), in MiB; None when unknown."""
        if self.proc is None:
            return None
        status = await asyncio.to_thread(_proc_status, self.proc.pid)
        raw = status.get("VmHWM", "")
        return int(raw.split()[0]) / 1024 if raw.endswith("kB") else None

    async def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the process has used so far, in seconds."""
        if self.proc is None:
            return None
        return await asyncio.to_thread(_cpu_seconds, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def tree_cpu_seconds(self) -> float | None:
        """CPU seconds of the process and all its descendants (see `tree_cpu_seconds`)."""
        if self.proc is None:
            return None
        return await asyncio.to_thread(tree_cpu_seconds, self.proc.pid)

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, `grace` seconds to exit, then SIGKILL; the exit code (None: never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = await proc.wait()
        except asyncio.CancelledError:
            # Interrupted while waiting (Ctrl-C): no more patience, but never leave it running.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        # Whatever the leader left behind in its group (e.g. Celery's pool children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _LIVE.discard(self)
        return code
