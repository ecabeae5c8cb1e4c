"""Exit codes and messages of the CLI when things go wrong (the stack in the test's loop)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.v1 import jobs_pb2 as pb

from common.auth import Role, Tokens, hash_entry
from services.simulator.app import SimulatorHandle
from tests.cli.conftest import run_cli
from tests.cli.proxy import running_proxy
from tests.support.inproc import InProcStack, inproc_stack, stack_settings
from tests.support.procs import free_port

ARENA = "https://example.com/arena.png"
UNKNOWN_JOB = "0b9f5f9e-0000-4000-8000-000000000000"


def target(stack: InProcStack) -> list[str]:
    return ["--target", f"127.0.0.1:{stack.gateway.grpc_port}"]


async def test_unreachable_gateway_exits_6() -> None:
    result = await run_cli("--target", f"127.0.0.1:{free_port()}", "get", UNKNOWN_JOB)
    assert result.code == 6
    assert result.stdout == "" and "UNAVAILABLE" in result.stderr
    as_json = await run_cli("--target", f"127.0.0.1:{free_port()}", "--json", "health")
    assert as_json.code == 6 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["code"] == "UNAVAILABLE"


async def test_refused_requests_exit_8_with_the_servers_message(
    inproc: InProcStack, sim: SimulatorHandle
) -> None:
    missing = await run_cli(*target(inproc), "get", UNKNOWN_JOB)
    assert missing.code == 8 and "NOT_FOUND" in missing.stderr and "no job" in missing.stderr

    invalid = await run_cli(*target(inproc), "--json", "story", "An idea", "-n", "100000")
    assert invalid.code == 8 and invalid.stdout == ""
    error = json.loads(invalid.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["message"].startswith("total_segments")

    sim.configure(latency=5.0)
    running = await run_cli(*target(inproc), "video", "--arena", ARENA, "-n", "1", "--no-watch")
    early = await run_cli(*target(inproc), "retry", running.stdout.strip())
    assert early.code == 8 and "FAILED_PRECONDITION" in early.stderr


async def test_bad_command_lines_exit_2(inproc: InProcStack) -> None:
    no_file = await run_cli(*target(inproc), "video", "--arena", "./no-such-arena.png")
    assert no_file.code == 2 and "no-such-arena.png" in no_file.stderr
    bad_arg = await run_cli(*target(inproc), "video", "--arena", ARENA, "--model-arg", "oops")
    assert bad_arg.code == 2 and "KEY=VALUE" in bad_arg.stderr
    unknown = await run_cli("video", "--no-such-option")
    assert unknown.code == 2


async def test_cancelled_job_exits_5(inproc: InProcStack, sim: SimulatorHandle) -> None:
    sim.configure(latency=5.0)
    started = await run_cli(*target(inproc), "video", "--arena", ARENA, "-n", "2", "--no-watch")
    job_id = started.stdout.strip()
    cancelled = await run_cli(*target(inproc), "cancel", job_id)
    assert cancelled.code == 0 and "CANCELLED" in cancelled.stdout
    watched = await run_cli(*target(inproc), "--json", "watch", job_id)
    assert watched.code == 5
    _, summary = watched.events_and_summary()
    assert summary["status"] == "CANCELLED" and summary["exit_code"] == 5


async def test_token_refused_exits_7_and_is_never_printed(inproc: InProcStack) -> None:
    token = "tok-0123456789-secret"
    upstream = f"127.0.0.1:{inproc.gateway.grpc_port}"
    async with running_proxy(upstream) as proxy:
        proxy.faults.required_token = token
        anonymous = await run_cli("--target", proxy.address, "list")
        wrong = await run_cli(
            "--target", proxy.address, "list", env={"ORCHESTRATOR_TOKEN": "wrong-secret-value"}
        )
        allowed = await run_cli(
            "--target", proxy.address, "--json", "list", env={"ORCHESTRATOR_TOKEN": token}
        )
        helped = await run_cli("--help", env={"ORCHESTRATOR_TOKEN": token})

    assert anonymous.code == 7 and "UNAUTHENTICATED" in anonymous.stderr
    assert wrong.code == 7 and "PERMISSION_DENIED" in wrong.stderr
    assert "wrong-secret-value" not in wrong.stderr + wrong.stdout
    assert allowed.code == 0 and json.loads(allowed.stdout)["jobs"] == []
    assert proxy.seen.metadata[-1]["authorization"] == f"Bearer {token}"
    assert helped.code == 0 and token not in helped.stdout
    assert "ORCHESTRATOR_TOKEN" in helped.stdout and "Exit codes" in helped.stdout


async def test_health_and_help(inproc: InProcStack) -> None:
    health = await run_cli(*target(inproc), "--json", "health")
    assert health.code == 0 and json.loads(health.stdout) == {"status": "SERVING"}
    helped = await run_cli("--help")
    for line in ("3    the job ended PARTIALLY_FAILED", "6    gateway unreachable", "130"):
        assert line in helped.stdout
    for command in ("video", "story", "watch", "get", "list", "retry", "cancel", "health"):
        assert f" {command} " in helped.stdout


async def test_get_shows_tasks(inproc: InProcStack) -> None:
    started = await inproc.stub.StartVideoJob(
        pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=2)
    )
    shown = await run_cli(*target(inproc), "get", started.job_id)
    assert shown.code == 0 and started.job_id in shown.stdout and "Segment" in shown.stdout


async def test_real_gateway_tokens_and_tls_from_the_command_line(
    tmp_path: Path, sim: SimulatorHandle, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    submit, read = "submit-token-0123456789", "read-token-0123456789"
    tokens = ",".join(
        [hash_entry("alice", Role.SUBMIT, submit), hash_entry("bob", Role.READ, read)]
    )
    settings = stack_settings(
        tmp_path, sim, auth_tokens=tokens, tls_cert_file=cert, tls_key_file=key
    )
    async with inproc_stack(settings) as stack:
        tls = {
            "ORCHESTRATOR_TARGET": f"127.0.0.1:{stack.gateway.grpc_port}",
            "ORCHESTRATOR_CA_FILE": str(cert),
            "ORCHESTRATOR_SERVER_NAME": "orchestrator.test",
        }
        alice = await run_cli(
            "--json", "video", "--arena", ARENA, "-n", "1",
            env={**tls, "ORCHESTRATOR_TOKEN": submit},
        )  # fmt: skip
        bob = await run_cli(
            "video", "--arena", ARENA, "--no-watch", env={**tls, "ORCHESTRATOR_TOKEN": read}
        )
        nobody = await run_cli("list", env=tls)
        plaintext = await run_cli(
            "--target", tls["ORCHESTRATOR_TARGET"], "--timeout", "2", "health",
            env={"ORCHESTRATOR_TOKEN": submit},
        )  # fmt: skip

    assert alice.code == 0, alice.stderr
    assert alice.events_and_summary()[1]["status"] == "COMPLETED"
    assert bob.code == 7 and "PERMISSION_DENIED" in bob.stderr and read not in bob.stderr
    assert nobody.code == 7 and "UNAUTHENTICATED" in nobody.stderr
    assert plaintext.code == 6 and submit not in plaintext.stderr


def test_token_new_prints_a_token_the_gateway_accepts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "token", "new", "--name", "alice", "--role", "read"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    token, entry = lines["token"].strip(), lines["AUTH_TOKENS"].strip()
    caller = Tokens.parse(entry).identify(f"Bearer {token}")
    assert (caller.name, caller.role) == ("alice", Role.READ)
    assert token not in entry
