"""Story files under OUTPUT_ROOT/<output_directory>/, written atomically.

A file is written to a temporary name in the same folder, flushed to disk and renamed over the
target, so a crash leaves either the old file or the new one, never half of one. The folder is
re-checked against the output root right before writing: a symlink may have appeared since the
gateway validated the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from common.paths import resolve_output_dir

# A temporary file this old is a dead writer's leftover (a write takes milliseconds).
LEFTOVER_AGE = 600.0


def safe_title(title: str) -> str:
    """`The Time Loop!` -> `The_Time_Loop` (file-name safe, never empty)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")[:80] or "Story"


def set_file_name(title: str, number: int) -> str:
    return f"{safe_title(title)}_set_{number:02d}.json"


def metadata_file_name(title: str) -> str:
    return f"{safe_title(title)}_metadata.json"


def _writer_tag() -> str:
    """Who writes a temporary file: its host and process (`~` never in a host name)."""
    return f"{socket.gethostname()}~{os.getpid()}~"


def _dead_writers(leftover: Path, prefix: str) -> bool:
    """The temporary file names a process of this host that no longer runs."""
    host, _, rest = leftover.name[len(prefix) :].partition("~")
    pid, _, _ = rest.partition("~")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _write_atomic(path: Path, data: Any) -> None:
    prefix = f".{path.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix + _writer_tag(), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # A worker killed mid-write leaves its temporary file behind; the file it meant to replace
    # is whole (old or new), and the leftover goes once the file is written again. A live
    # writer's file may be in progress (two sets finishing together both rewrite the metadata
    # file): a leftover is one whose process on this host is gone, or one too old to be
    # anybody's write (another host's, on a shared volume).
    stale = time.time() - LEFTOVER_AGE
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if _dead_writers(leftover, prefix) or leftover.stat().st_mtime < stale:
                leftover.unlink(missing_ok=True)


class StoryFiles:
    def __init__(self, output_root: Path) -> None:
        self.root = output_root

    def folder(self, directory: str) -> Path:
        """The job's folder, checked inside the root and created if needed."""
        path = resolve_output_dir(self.root, directory)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root.resolve()))

    async def write(self, directory: str, name: str, data: Any) -> Path:
        """Write `data` as JSON to the job's folder; returns the file's path."""

        def work() -> Path:
            path = self.folder(directory) / name
            _write_atomic(path, data)
            return path

        return await asyncio.to_thread(work)
