"""Access control: with tokens configured every RPC and route but health needs one, roles limit
what a token may do, and one owner's jobs do not exist for another."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from orchestrator.v1 import jobs_pb2 as pb
from orchestrator.v1 import jobs_pb2_grpc as pb_grpc

from common.settings import Settings, SettingsError
from services.gateway.service import check_exposure
from services.simulator.app import SimulatorHandle
from tests.security.conftest import auth_header, bearer, token_setting
from tests.support.client import watch_to_end
from tests.support.inproc import InProcStack, inproc_stack, stack_settings

ARENA = "https://example.com/arena.png"
VIDEO = pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1)
STORY = pb.StartStoryJobRequest(idea="a duel", total_segments=2)

UNARY: list[tuple[str, Any]] = [
    ("StartVideoJob", VIDEO),
    ("StartStoryJob", STORY),
    ("GetJob", pb.GetJobRequest(job_id="no-such-job")),
    ("ListJobs", pb.ListJobsRequest()),
    ("RetryFailed", pb.RetryFailedRequest(job_id="no-such-job")),
    ("CancelJob", pb.CancelJobRequest(job_id="no-such-job")),
]
HTTP_ROUTES = [
    ("POST", "/api/generate-video", {"action": "start", "battleArenaUrl": ARENA}),
    ("POST", "/api/generate-video", {"action": "status", "sessionId": "x"}),
    ("POST", "/generate-movie-auto", {"idea": "a duel", "total_segments": 2, "wait": False}),
    ("POST", "/retry-failed-story-sets", {"job_id": "x", "wait": False}),
    ("GET", "/story-jobs/x", None),
    ("GET", "/metrics", None),
    ("POST", "/api/uploads", None),
]


async def _code(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("method", "request_message"), UNARY, ids=[m for m, _ in UNARY])
@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer wrong"),)], ids=["none", "bad"]
)
async def test_every_rpc_needs_a_valid_token(
    secured: InProcStack, method: str, request_message: Any, metadata: tuple[Any, ...]
) -> None:
    rpc = getattr(secured.stub, method)
    assert await _code(lambda: rpc(request_message, metadata=metadata)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_watch_and_reflection_need_a_token_and_health_does_not(secured: InProcStack) -> None:
    watch = secured.stub.WatchJob(pb.WatchJobRequest(job_id="x"))
    assert await _code(lambda: watch) is grpc.StatusCode.UNAUTHENTICATED
    address = f"127.0.0.1:{secured.gateway.grpc_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask(metadata: tuple[Any, ...]) -> None:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for _ in reflect.ServerReflectionInfo(iter([request]), metadata=metadata):
                break

        assert await _code(lambda: ask(())) is grpc.StatusCode.UNAUTHENTICATED
        assert await _code(lambda: ask(bearer("reader"))) is grpc.StatusCode.OK


@pytest.mark.parametrize(("verb", "path", "body"), HTTP_ROUTES)
async def test_every_http_route_but_health_needs_a_valid_token(
    secured: InProcStack, verb: str, path: str, body: Any
) -> None:
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}):
            answer = await http.request(verb, path, json=body, headers=headers)
            assert answer.status_code == 401, (path, answer.text)
            assert "error" in answer.json()
        assert (await http.get("/healthz")).status_code == 200


async def test_a_read_token_reads_but_cannot_start_retry_cancel_or_upload(
    secured: InProcStack,
) -> None:
    stub = secured.stub
    job = await stub.StartVideoJob(VIDEO, metadata=bearer("alice"))
    for method, message in [
        ("StartVideoJob", VIDEO),
        ("StartStoryJob", STORY),
        ("RetryFailed", pb.RetryFailedRequest(job_id=job.job_id)),
        ("CancelJob", pb.CancelJobRequest(job_id=job.job_id)),
    ]:
        rpc = getattr(stub, method)
        code = await _code(lambda rpc=rpc, message=message: rpc(message, metadata=bearer("reader")))
        assert code is grpc.StatusCode.PERMISSION_DENIED, method
    seen = await stub.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=bearer("reader"))
    assert seen.id == job.job_id  # the reader is named alice: alice's jobs are its own
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        start = {"action": "start", "battleArenaUrl": ARENA}
        refused = await http.post("/api/generate-video", json=start, headers=auth_header("reader"))
        assert refused.status_code == 403
        upload = await http.post(
            "/api/uploads",
            content=b"\x89PNG\r\n\x1a\n",
            headers={**auth_header("reader"), "Content-Type": "image/png"},
        )
        assert upload.status_code == 403


async def test_one_owner_never_sees_anothers_job(secured: InProcStack) -> None:
    stub = secured.stub
    job = await stub.StartVideoJob(VIDEO, metadata=bearer("alice"))
    story = await stub.StartStoryJob(STORY, metadata=bearer("alice"))
    await watch_to_end(stub, job.job_id, metadata=bearer("alice"))
    for method, message in [
        ("GetJob", pb.GetJobRequest(job_id=job.job_id)),
        ("RetryFailed", pb.RetryFailedRequest(job_id=job.job_id)),
        ("CancelJob", pb.CancelJobRequest(job_id=job.job_id)),
    ]:
        rpc = getattr(stub, method)
        code = await _code(lambda rpc=rpc, message=message: rpc(message, metadata=bearer("bob")))
        assert code is grpc.StatusCode.NOT_FOUND, method
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=bearer("bob"))
    assert await _code(lambda: watch) is grpc.StatusCode.NOT_FOUND
    listed = await stub.ListJobs(pb.ListJobsRequest(), metadata=bearer("bob"))
    assert list(listed.jobs) == []
    mine = await stub.ListJobs(pb.ListJobsRequest(), metadata=bearer("alice"))
    assert {j.id for j in mine.jobs} == {job.job_id, story.job_id}
    everyone = await stub.ListJobs(pb.ListJobsRequest(), metadata=bearer("admin"))
    assert {j.id for j in everyone.jobs} == {job.job_id, story.job_id}
    await stub.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=bearer("admin"))
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        other = await http.get(f"/story-jobs/{story.job_id}", headers=auth_header("bob"))
        assert other.status_code == 404
        status = {"action": "status", "sessionId": job.job_id}
        seed = await http.post("/api/generate-video", json=status, headers=auth_header("bob"))
        assert seed.status_code == 404
        owner = await http.post("/api/generate-video", json=status, headers=auth_header("alice"))
        assert owner.status_code == 200


async def test_idempotency_keys_belong_to_their_owner(secured: InProcStack) -> None:
    keyed = pb.StartVideoJobRequest(battle_arena_url=ARENA, total_segments=1, idempotency_key="k1")
    a = await secured.stub.StartVideoJob(keyed, metadata=bearer("alice"))
    b = await secured.stub.StartVideoJob(keyed, metadata=bearer("bob"))
    again = await secured.stub.StartVideoJob(keyed, metadata=bearer("alice"))
    assert a.created and b.created and a.job_id != b.job_id
    assert (again.job_id, again.created) == (a.job_id, False)


async def test_a_caller_over_its_rate_is_told_to_slow_down(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(
        tmp_path, sim, auth_tokens=token_setting(), rate_limit_per_second=0.5, rate_limit_burst=2
    )
    async with inproc_stack(settings, workers=()) as stack:
        request = pb.ListJobsRequest()
        for _ in range(2):
            await stack.stub.ListJobs(request, metadata=bearer("alice"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.ListJobs(request, metadata=bearer("alice"))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await stack.stub.ListJobs(request, metadata=bearer("bob"))  # bob has his own budget
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            answer = await http.get("/metrics", headers=auth_header("alice"))
            assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1


async def test_concurrent_streams_per_caller_are_bounded(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    settings = stack_settings(tmp_path, sim, auth_tokens=token_setting(), max_streams_per_caller=1)
    async with inproc_stack(settings, workers=()) as stack:
        job = await stack.stub.StartVideoJob(VIDEO, metadata=bearer("alice"))
        first = stack.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=bearer("alice"))
        await first.read()  # the stream is open
        second = stack.stub.WatchJob(
            pb.WatchJobRequest(job_id=job.job_id), metadata=bearer("alice")
        )
        assert await _code(lambda: second) is grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()


def test_without_tokens_the_gateway_keeps_to_loopback() -> None:
    exposed = Settings.from_env(grpc_addr="0.0.0.0:50051")
    with pytest.raises(SettingsError, match="AUTH_TOKENS"):
        check_exposure(exposed)
    check_exposure(Settings.from_env(grpc_addr="0.0.0.0:50051", allow_anonymous=True))
    check_exposure(Settings.from_env(grpc_addr="0.0.0.0:50051", auth_tokens=token_setting()))
    check_exposure(Settings.from_env(grpc_addr="[::1]:50051", http_addr="localhost:8080"))


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_tls_on_both_ports(tmp_path: Path, sim: SimulatorHandle) -> None:
    cert, key = _self_signed(tmp_path)
    settings = stack_settings(tmp_path, sim, tls_cert_file=cert, tls_key_file=key)
    async with inproc_stack(settings, workers=()) as stack:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        target = f"localhost:{stack.gateway.grpc_port}"
        async with grpc.aio.secure_channel(target, credentials) as channel:
            listed = await pb_grpc.JobServiceStub(channel).ListJobs(pb.ListJobsRequest())
            assert list(listed.jobs) == []
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
            answer = await http.get(f"https://localhost:{stack.gateway.http_port}/healthz")
            assert answer.status_code == 200
        async with grpc.aio.insecure_channel(target) as plain:
            code = await _code(lambda: pb_grpc.JobServiceStub(plain).ListJobs(pb.ListJobsRequest()))
            assert code is grpc.StatusCode.UNAVAILABLE  # no plaintext on a TLS port
