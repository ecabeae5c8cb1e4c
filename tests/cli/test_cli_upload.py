"""`video --arena ./file.png`: the image goes through the gateway's upload route first."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from orchestrator.v1 import jobs_pb2 as pb

from common.auth import Role, hash_entry
from orchestrator_client import UploadError, upload_image
from services.simulator.app import SimulatorHandle
from tests.cli.conftest import run_cli
from tests.support.inproc import inproc_stack, stack_settings
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


async def test_local_arena_is_uploaded_then_used_by_every_segment(
    stack: Stack, sim: SimulatorHandle, tmp_path: Path
) -> None:
    arena = tmp_path / "arena.png"
    arena.write_bytes(tiny_png())
    result = await run_cli(
        "--target", stack.env["GRPC_ADDR"], "--http-url", stack.http_url,
        "--json", "video", "--arena", str(arena), "-n", "2",
    )  # fmt: skip
    assert result.code == 0, result.stderr + stack.logs()[-3000:]
    _, summary = result.events_and_summary()
    job = await stack.stub.GetJob(pb.GetJobRequest(job_id=summary["job_id"]))
    url = job.video.battle_arena_url
    assert url.startswith(("http://", "https://")) and url != str(arena)
    assert summary["status"] == "COMPLETED"


async def test_uploads_refused_by_the_gateway(tmp_path: Path, sim: SimulatorHandle) -> None:
    reader, submitter = "read-token-0123456789", "submit-token-0123456789"
    tokens = ",".join(
        [hash_entry("bob", Role.READ, reader), hash_entry("alice", Role.SUBMIT, submitter)]
    )
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    real = tmp_path / "arena.png"
    real.write_bytes(tiny_png())
    async with inproc_stack(stack_settings(tmp_path, sim, auth_tokens=tokens)) as stack:
        with pytest.raises(UploadError) as anonymous:
            await upload_image(real, http_url=stack.http_url)
        with pytest.raises(UploadError) as forbidden:
            await upload_image(real, http_url=stack.http_url, token=reader)
        url = await upload_image(real, http_url=stack.http_url, token=submitter)
        cli_forbidden = await run_cli(
            "--target", f"127.0.0.1:{stack.gateway.grpc_port}", "--http-url", stack.http_url,
            "video", "--arena", str(real), env={"ORCHESTRATOR_TOKEN": reader},
        )  # fmt: skip
        cli_refused = await run_cli(
            "--target", f"127.0.0.1:{stack.gateway.grpc_port}", "--http-url", stack.http_url,
            "video", "--arena", str(empty), env={"ORCHESTRATOR_TOKEN": submitter},
        )  # fmt: skip
    assert anonymous.value.http_status == 401
    assert forbidden.value.http_status == 403 and reader not in str(forbidden.value)
    assert url.startswith(("http://", "https://"))
    assert cli_forbidden.code == 7, cli_forbidden.stderr
    assert cli_refused.code == 8, cli_refused.stderr
    assert "upload refused: HTTP 400" in cli_refused.stderr
    with pytest.raises(ValueError, match="not an image"):
        await upload_image(tmp_path / "arena.gif", http_url="http://127.0.0.1:9")
