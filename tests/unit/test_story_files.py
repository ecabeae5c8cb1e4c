"""Story files: atomic writes inside the output root, leftovers of a killed writer cleaned."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import InvalidArgument
from services.story_worker.files import (
    LEFTOVER_AGE,
    StoryFiles,
    metadata_file_name,
    set_file_name,
)


def test_names_are_file_safe() -> None:
    assert set_file_name("The Time Loop: Part 2!", 3) == "The_Time_Loop_Part_2_set_03.json"
    assert metadata_file_name("???") == "Story_metadata.json"


async def test_write_replaces_atomically_and_removes_a_killed_writers_leftover(
    tmp_path: Path,
) -> None:
    files = StoryFiles(tmp_path)
    folder = tmp_path / "job"
    folder.mkdir()
    leftover = folder / ".T_set_01.json.k1ll3d.tmp"
    leftover.write_text('{"half": ')  # what a SIGKILL mid-write left, a while ago
    long_ago = time.time() - LEFTOVER_AGE - 1
    os.utime(leftover, (long_ago, long_ago))
    path = await files.write("job", "T_set_01.json", {"set_number": 1})
    assert json.loads(path.read_text()) == {"set_number": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["T_set_01.json"]
    assert files.relative(path) == "job/T_set_01.json"


async def test_a_fresh_leftover_of_a_dead_process_goes_a_live_ones_stays(tmp_path: Path) -> None:
    # A worker SIGKILLed mid-write and restarted writes the file again seconds later: its dead
    # predecessor's temporary file goes at once; a live process's stays (it may be writing).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        folder = tmp_path / "job"
        folder.mkdir()
        killed = folder / f".T_set_01.json.{host}~{dead.pid}~abc.tmp"
        killed.write_text('{"half": ')
        busy = folder / f".T_set_01.json.{host}~{alive.pid}~def.tmp"
        busy.write_text("{")
        elsewhere = folder / f".T_set_01.json.other-host~{dead.pid}~ghi.tmp"
        elsewhere.write_text("{")  # another host's process: only its age could tell
        await StoryFiles(tmp_path).write("job", "T_set_01.json", {"set_number": 1})
        assert not killed.exists()
        assert busy.exists() and elsewhere.exists()
    finally:
        alive.kill()
        alive.wait()


async def test_concurrent_writers_of_one_file_never_remove_each_others_work(
    tmp_path: Path,
) -> None:
    # Two story sets finishing together both rewrite the metadata file.
    files = StoryFiles(tmp_path)
    (tmp_path / "job").mkdir()
    in_progress = tmp_path / "job" / ".T_metadata.json.wr1t1ng.tmp"
    in_progress.write_text("{")  # another writer, between its write and its rename
    await files.write("job", "T_metadata.json", {"n": 0})
    assert in_progress.exists()
    writes = [files.write("job", "T_metadata.json", {"n": n}) for n in range(1, 30)]
    await asyncio.gather(*writes)
    assert json.loads((tmp_path / "job" / "T_metadata.json").read_text())["n"] in range(1, 30)


async def test_a_symlink_appearing_after_validation_is_refused_at_write_time(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "job")
    with pytest.raises(InvalidArgument):
        await StoryFiles(root).write("job", "x.json", {})
    assert list(outside.iterdir()) == []
