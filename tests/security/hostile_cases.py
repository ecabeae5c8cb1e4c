"""Hostile and careless requests, each with the answer it must get: the status and a word the
message must contain (naming the field or the problem)."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.struct_pb2 import Struct
from orchestrator.v1 import jobs_pb2 as pb

ARENA = "https://example.com/arena.png"
INVALID = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class GrpcCase:
    name: str
    method: str
    request: Any  # a message, or raw bytes sent as they are
    code: str
    says: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class HttpCase:
    name: str
    verb: str
    path: str
    body: bytes = b""
    status: int = 400
    says: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def video(**kw: Any) -> pb.StartVideoJobRequest:
    values: dict[str, Any] = {"battle_arena_url": ARENA, "total_segments": 2}
    values.update(kw)
    return pb.StartVideoJobRequest(**values)


def video_args(args: dict[str, Any]) -> pb.StartVideoJobRequest:
    request = video()
    struct = Struct()
    struct.update(args)
    request.model_arguments.CopyFrom(struct)
    return request


def story(**kw: Any) -> pb.StartStoryJobRequest:
    values: dict[str, Any] = {"idea": "a duel at dawn", "total_segments": 4}
    values.update(kw)
    return pb.StartStoryJobRequest(**values)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"inner": value}
    return value


def token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def raw(*fields: bytes) -> bytes:
    return b"".join(fields)


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _url_cases() -> list[GrpcCase]:
    urls = [
        ("url missing", "", "battle_arena_url"),
        ("url ftp", "ftp://example.com/a.png", "http or https"),
        ("url credentials", "https://user:pass@example.com/a.png", "credentials"),
        ("url loopback v4", "http://127.0.0.1/a.png", "loopback"),
        ("url loopback v6", "http://[::1]/a.png", "loopback"),
        ("url metadata service", "http://169.254.169.254/latest/meta-data", "link-local"),
        ("url private 10/8", "http://10.1.2.3/a.png", "private"),
        ("url private 192.168", "https://192.168.0.10/a.png", "private"),
        ("url v4-mapped v6", "http://[::ffff:127.0.0.1]/a.png", "loopback"),
        ("url malformed ipv6", "http://[::1/a.png", "battle_arena_url"),
        ("url localhost", "http://localhost:8080/a.png", "local"),
        ("url .internal", "http://db.internal/a.png", "local"),
        ("url decimal ip", "http://2130706433/a.png", "numeric"),
        ("url hex ip", "http://0x7f.0x0.0x0.0x1/a.png", "numeric"),
        ("url short ip", "http://127.1/a.png", "numeric"),
        ("url nul", "https://example.com/a\x00.png", "battle_arena_url"),
        ("url crlf", "https://example.com/a.png\r\nX-Injected: 1", "battle_arena_url"),
        ("url space", "https://example.com/a b.png", "spaces"),
        ("url too long", "https://example.com/" + "a" * 3000, "2048"),
        ("url bad port", "https://example.com:99999/a.png", "battle_arena_url"),
        ("url no host", "https:///a.png", "host"),
        ("url javascript", "javascript:alert(1)", "http or https"),
    ]
    return [GrpcCase(n, "StartVideoJob", video(battle_arena_url=u), INVALID, s) for n, u, s in urls]


GRPC_CASES: list[GrpcCase] = [
    *_url_cases(),
    GrpcCase("segments zero", "StartVideoJob", video(total_segments=0), INVALID, "total_segments"),
    GrpcCase("segments negative", "StartVideoJob", video(total_segments=-5), INVALID, "total_segments"),
    GrpcCase("segments too many", "StartVideoJob", video(total_segments=10_001), INVALID, "total_segments"),
    GrpcCase("prompt nul", "StartVideoJob", video(prompt="a\x00b"), INVALID, "prompt"),
    GrpcCase("prompt crlf", "StartVideoJob", video(prompt="line\r\nline"), INVALID, "prompt"),
    GrpcCase("prompt escape", "StartVideoJob", video(prompt="\x1b[31mred"), INVALID, "prompt"),
    GrpcCase("prompt too long", "StartVideoJob", video(prompt="x" * 2001), INVALID, "prompt"),
    GrpcCase("prompts empty item", "StartVideoJob", video(total_segments=0, segment_prompts=["ok", ""]), INVALID, "segment_prompts[1]"),
    GrpcCase("prompts blank item", "StartVideoJob", video(total_segments=0, segment_prompts=["   "]), INVALID, "segment_prompts[0]"),
    GrpcCase("prompts control", "StartVideoJob", video(total_segments=0, segment_prompts=["a\tb"]), INVALID, "segment_prompts[0]"),
    GrpcCase("prompts count mismatch", "StartVideoJob", video(total_segments=3, segment_prompts=["a", "b"]), INVALID, "total_segments"),
    GrpcCase("model dotdot", "StartVideoJob", video(model="fal-ai/../../admin"), INVALID, "model"),
    GrpcCase("model dot segment", "StartVideoJob", video(model="fal-ai/./kling"), INVALID, "model"),
    GrpcCase("model one segment", "StartVideoJob", video(model="kling"), INVALID, "model"),
    GrpcCase("model empty segment", "StartVideoJob", video(model="fal-ai//kling"), INVALID, "model"),
    GrpcCase("model nul", "StartVideoJob", video(model="fal-ai/kl\x00ing"), INVALID, "model"),
    GrpcCase("model query", "StartVideoJob", video(model="fal-ai/kling?x=1"), INVALID, "model"),
    GrpcCase("model absolute", "StartVideoJob", video(model="/fal-ai/kling"), INVALID, "model"),
    GrpcCase("key space", "StartVideoJob", video(idempotency_key="a b"), INVALID, "idempotency_key"),
    GrpcCase("key nul", "StartVideoJob", video(idempotency_key="a\x00"), INVALID, "idempotency_key"),
    GrpcCase("key newline", "StartVideoJob", video(idempotency_key="k\n"), INVALID, "idempotency_key"),
    GrpcCase("key too long", "StartVideoJob", video(idempotency_key="k" * 201), INVALID, "idempotency_key"),
    GrpcCase("key non-ascii", "StartVideoJob", video(idempotency_key="ключ"), INVALID, "idempotency_key"),
    GrpcCase("priority unknown", "StartVideoJob", video(priority=7), INVALID, "priority"),
    GrpcCase("priority negative", "StartVideoJob", video(priority=-1), INVALID, "priority"),
    GrpcCase("retries too many", "StartVideoJob", video(max_retries=11), INVALID, "max_retries"),
    GrpcCase("retries negative", "StartVideoJob", video(max_retries=-1), INVALID, "max_retries"),
    GrpcCase("args nan", "StartVideoJob", video_args({"cfg": float("nan")}), INVALID, "finite"),
    GrpcCase("args infinity", "StartVideoJob", video_args({"cfg": float("inf")}), INVALID, "finite"),
    GrpcCase("args nested nan", "StartVideoJob", video_args({"a": [1, {"b": float("-inf")}]}), INVALID, "finite"),
    GrpcCase("args too deep", "StartVideoJob", video_args(nested(12)), INVALID, "nested"),
    GrpcCase("args reserved prompt", "StartVideoJob", video_args({"prompt": "x"}), INVALID, "prompt"),
    GrpcCase("args reserved image", "StartVideoJob", video_args({"image_url": "x"}), INVALID, "image_url"),
    GrpcCase("args too big", "StartVideoJob", video_args({f"k{i}": "v" * 100 for i in range(200)}), INVALID, "bytes"),
    GrpcCase("args key control", "StartVideoJob", video_args({"a\x01": 1}), INVALID, "model_arguments"),
    GrpcCase("args value nul", "StartVideoJob", video_args({"a": "x\x00y"}), INVALID, "model_arguments"),
    GrpcCase("args key too long", "StartVideoJob", video_args({"k" * 65: 1}), INVALID, "model_arguments"),
    GrpcCase("video empty request", "StartVideoJob", pb.StartVideoJobRequest(), INVALID, "battle_arena_url"),
    GrpcCase("video raw garbage", "StartVideoJob", b"\xff\xff\xff\xff", INVALID, "decoded"),
    GrpcCase("video raw invalid utf8", "StartVideoJob", raw(b"\x0a\x03\xff\xfe\xfd"), INVALID, "decoded"),
    GrpcCase("video raw truncated", "StartVideoJob", raw(b"\x0a\x10abc"), INVALID, "decoded"),
    GrpcCase("video raw bad varint", "StartVideoJob", raw(b"\x10" + b"\xff" * 11), INVALID, "decoded"),
    GrpcCase("video raw wrong wire type", "StartVideoJob", raw(b"\x15\x00\x00"), INVALID, "decoded"),
    GrpcCase("idea empty", "StartStoryJob", story(idea=""), INVALID, "idea"),
    GrpcCase("idea blank", "StartStoryJob", story(idea="   "), INVALID, "idea"),
    GrpcCase("idea nul", "StartStoryJob", story(idea="a\x00b"), INVALID, "idea"),
    GrpcCase("idea newline", "StartStoryJob", story(idea="one\ntwo"), INVALID, "idea"),
    GrpcCase("idea bidi control", "StartStoryJob", story(idea="x\x85y"), INVALID, "idea"),
    GrpcCase("idea too long", "StartStoryJob", story(idea="i" * 4001), INVALID, "idea"),
    GrpcCase("story segments zero", "StartStoryJob", story(total_segments=0), INVALID, "total_segments"),
    GrpcCase("story segments too many", "StartStoryJob", story(total_segments=1001), INVALID, "total_segments"),
    GrpcCase("per set too many", "StartStoryJob", story(segments_per_set=51), INVALID, "segments_per_set"),
    GrpcCase("per set negative", "StartStoryJob", story(segments_per_set=-2), INVALID, "segments_per_set"),
    GrpcCase("dir escape", "StartStoryJob", story(output_directory="../escape"), INVALID, "output_directory"),
    GrpcCase("dir nested escape", "StartStoryJob", story(output_directory="a/../../b"), INVALID, "output_directory"),
    GrpcCase("dir absolute", "StartStoryJob", story(output_directory="/etc"), INVALID, "output_directory"),
    GrpcCase("dir too long", "StartStoryJob", story(output_directory="d" * 300), INVALID, "output_directory"),
    GrpcCase("dir name over limit", "StartStoryJob", story(output_directory="a/" + "é" * 150), INVALID, "output_directory"),
    GrpcCase("dir nul", "StartStoryJob", story(output_directory="a\x00b"), INVALID, "output_directory"),
    GrpcCase("dir backslash", "StartStoryJob", story(output_directory="a\\..\\b"), INVALID, "output_directory"),
    GrpcCase("dir newline", "StartStoryJob", story(output_directory="a\nb"), INVALID, "output_directory"),
    GrpcCase("openai model space", "StartStoryJob", story(model="gpt 4"), INVALID, "model"),
    GrpcCase("openai model slash", "StartStoryJob", story(model="../gpt"), INVALID, "model"),
    GrpcCase("story key tab", "StartStoryJob", story(idempotency_key="a\tb"), INVALID, "idempotency_key"),
    GrpcCase("story slot cap", "StartStoryJob", story(max_concurrency=2), INVALID, "max_concurrency"),
    GrpcCase("video slot cap negative", "StartVideoJob", video(max_concurrency=-1), INVALID, "max_concurrency"),
    GrpcCase("video deadline negative", "StartVideoJob", video(deadline_seconds=-5), INVALID, "deadline_seconds"),
    GrpcCase("video deadline past 7 days", "StartVideoJob", video(deadline_seconds=8 * 86400), INVALID, "deadline_seconds"),
    GrpcCase("story priority", "StartStoryJob", story(priority=99), INVALID, "priority"),
    GrpcCase("story retries", "StartStoryJob", story(max_retries=50), INVALID, "max_retries"),
    GrpcCase("story raw garbage", "StartStoryJob", b"\x0a\xff\xff\xff\xff\x0f", INVALID, "decoded"),
    GrpcCase("get empty id", "GetJob", pb.GetJobRequest(job_id=""), INVALID, "job_id"),
    GrpcCase("get nul id", "GetJob", pb.GetJobRequest(job_id="abc\x00"), INVALID, "job_id"),
    GrpcCase("get long id", "GetJob", pb.GetJobRequest(job_id="a" * 65), INVALID, "job_id"),
    GrpcCase("get sql id", "GetJob", pb.GetJobRequest(job_id="x'; DROP TABLE jobs; --"), INVALID, "job_id"),
    GrpcCase("get unknown id", "GetJob", pb.GetJobRequest(job_id="0f1e2d3c-unknown"), NOT_FOUND, "no job"),
    GrpcCase("get raw garbage", "GetJob", b"\x0a\x05\xc3\x28\xa0\xa1\xe2", INVALID, "decoded"),
    GrpcCase("list page size", "ListJobs", pb.ListJobsRequest(page_size=501), INVALID, "page_size"),
    GrpcCase("list negative page", "ListJobs", pb.ListJobsRequest(page_size=-1), INVALID, "page_size"),
    GrpcCase("token garbage", "ListJobs", pb.ListJobsRequest(page_token="!!!not-base64"), INVALID, "page_token"),
    GrpcCase("token huge number", "ListJobs", pb.ListJobsRequest(page_token=token([10**400, "x"])), INVALID, "page_token"),
    GrpcCase("token nan", "ListJobs", pb.ListJobsRequest(page_token=base64.urlsafe_b64encode(b'[NaN,"x"]').decode()), INVALID, "page_token"),
    GrpcCase("token deep", "ListJobs", pb.ListJobsRequest(page_token=token(nested(30))), INVALID, "page_token"),
    GrpcCase("token wrong shape", "ListJobs", pb.ListJobsRequest(page_token=token({"a": 1})), INVALID, "page_token"),
    GrpcCase("token bool", "ListJobs", pb.ListJobsRequest(page_token=token([True, "x"])), INVALID, "page_token"),
    GrpcCase("token too long", "ListJobs", pb.ListJobsRequest(page_token="A" * 1000), INVALID, "page_token"),
    GrpcCase("list unknown kind", "ListJobs", pb.ListJobsRequest(kind=99), INVALID, "kind"),  # type: ignore[arg-type]
    GrpcCase("list unknown status", "ListJobs", pb.ListJobsRequest(statuses=[3, 99]), INVALID, "statuses[1]"),  # type: ignore[list-item]
    GrpcCase("list too many statuses", "ListJobs", pb.ListJobsRequest(statuses=[1] * 20), INVALID, "statuses"),  # type: ignore[list-item]
    GrpcCase("watch empty id", "WatchJob", pb.WatchJobRequest(job_id=""), INVALID, "job_id"),
    GrpcCase("watch heartbeat high", "WatchJob", pb.WatchJobRequest(job_id="abc", heartbeat_seconds=301), INVALID, "heartbeat_seconds"),
    GrpcCase("watch heartbeat negative", "WatchJob", pb.WatchJobRequest(job_id="abc", heartbeat_seconds=-5), INVALID, "heartbeat_seconds"),
    GrpcCase("watch negative cursor", "WatchJob", pb.WatchJobRequest(job_id="abc", after_cursor=-1), INVALID, "after_cursor"),
    GrpcCase("watch huge cursor", "WatchJob", pb.WatchJobRequest(job_id="abc", after_cursor=2**62), INVALID, "after_cursor"),
    GrpcCase("watch unknown", "WatchJob", pb.WatchJobRequest(job_id="unknown-job"), NOT_FOUND, "no job"),
    GrpcCase("watch raw garbage", "WatchJob", b"\xfa\xfb", INVALID, "decoded"),
    GrpcCase("retry too many", "RetryFailed", pb.RetryFailedRequest(job_id="abc", max_retries=11), INVALID, "max_retries"),
    GrpcCase("retry nul id", "RetryFailed", pb.RetryFailedRequest(job_id="\x00"), INVALID, "job_id"),
    GrpcCase("retry unknown", "RetryFailed", pb.RetryFailedRequest(job_id="unknown-job"), NOT_FOUND, "no job"),
    GrpcCase("cancel empty", "CancelJob", pb.CancelJobRequest(job_id=""), INVALID, "job_id"),
    GrpcCase("cancel unicode id", "CancelJob", pb.CancelJobRequest(job_id="jöb"), INVALID, "job_id"),
    GrpcCase("cancel unknown", "CancelJob", pb.CancelJobRequest(job_id="unknown-job"), NOT_FOUND, "no job"),
]  # fmt: skip

GENERATE = "/api/generate-video"
MOVIE = "/generate-movie-auto"
RETRY = "/retry-failed-story-sets"
JSON = {"Content-Type": "application/json"}


def start(**kw: Any) -> bytes:
    return j({"action": "start", "battleArenaUrl": ARENA, **kw})


def movie(**kw: Any) -> bytes:
    return j({"idea": "a duel", "total_segments": 2, "wait": False, **kw})


HTTP_CASES: list[HttpCase] = [
    HttpCase("not json", "POST", GENERATE, b"{nope", says="body"),
    HttpCase("json array", "POST", GENERATE, b"[1, 2]", says="body"),
    HttpCase("json string", "POST", GENERATE, b'"start"', says="body"),
    HttpCase("json deep", "POST", GENERATE, b"[" * 100_000 + b"]" * 100_000, says="body"),
    HttpCase("json object deep", "POST", GENERATE, j(nested(40)), says="body"),
    HttpCase("json nan", "POST", GENERATE, b'{"action": "start", "totalSegments": NaN}', says="body"),
    HttpCase("json infinity", "POST", GENERATE, b'{"action": "start", "x": Infinity}', says="body"),
    HttpCase("json invalid utf8", "POST", GENERATE, b'{"action": "\xff\xfe"}', says="UTF-8"),
    HttpCase("empty body", "POST", GENERATE, b"", says="body"),
    HttpCase("lying gzip", "POST", GENERATE, start(), says="body", headers={"Content-Encoding": "gzip"}),
    HttpCase("lying deflate", "POST", GENERATE, start(), says="body", headers={"Content-Encoding": "deflate"}),
    HttpCase("gzip of garbage", "POST", GENERATE, gzip.compress(b"{oops"), says="body", headers={"Content-Encoding": "gzip"}),
    HttpCase("too large", "POST", GENERATE, b'{"a": "' + b"x" * (2 << 20) + b'"}', says="body"),
    HttpCase("action missing", "POST", GENERATE, j({"battleArenaUrl": ARENA}), says="action"),
    HttpCase("action unknown", "POST", GENERATE, j({"action": "explode"}), says="action"),
    HttpCase("action number", "POST", GENERATE, j({"action": 1}), says="action"),
    HttpCase("url number", "POST", GENERATE, start(battleArenaUrl=42), says="battleArenaUrl"),
    HttpCase("url list", "POST", GENERATE, start(battleArenaUrl=[ARENA]), says="battleArenaUrl"),
    HttpCase("url crlf", "POST", GENERATE, start(battleArenaUrl=ARENA + "\r\nx"), says="battleArenaUrl"),
    HttpCase("url loopback", "POST", GENERATE, start(battleArenaUrl="http://127.0.0.1:8080/x"), says="loopback"),
    HttpCase("prompts string", "POST", GENERATE, start(segmentPrompts="abc"), says="segmentPrompts"),
    HttpCase("prompts object", "POST", GENERATE, start(segmentPrompts={"a": 1}), says="segmentPrompts"),
    HttpCase("prompts numbers", "POST", GENERATE, start(segmentPrompts=[1, 2]), says="segmentPrompts"),
    HttpCase("segments string", "POST", GENERATE, start(totalSegments="5"), says="totalSegments"),
    HttpCase("segments bool", "POST", GENERATE, start(totalSegments=True), says="totalSegments"),
    HttpCase("segments float", "POST", GENERATE, start(totalSegments=1.5), says="totalSegments"),
    HttpCase("segments huge", "POST", GENERATE, start(totalSegments=10**30), says="totalSegments"),
    HttpCase("segments zero", "POST", GENERATE, start(totalSegments=0), says="totalSegments"),
    HttpCase("prompt number", "POST", GENERATE, start(prompt=5), says="prompt"),
    HttpCase("key object", "POST", GENERATE, start(idempotencyKey={"k": 1}), says="idempotencyKey"),
    HttpCase("unknown field", "POST", GENERATE, start(segments=3), says="unknown field"),
    HttpCase("status id number", "POST", GENERATE, j({"action": "status", "sessionId": 12}), says="sessionId"),
    HttpCase("status id nul", "POST", GENERATE, j({"action": "status", "sessionId": "a\u0000"}), says="sessionId"),
    HttpCase("status unknown id", "POST", GENERATE, j({"action": "status", "sessionId": "nope-nope"}), status=404, says="no job"),
    HttpCase("idea number", "POST", MOVIE, movie(idea=42), says="idea"),
    HttpCase("idea list", "POST", MOVIE, movie(idea=["a", "b"]), says="idea"),
    HttpCase("idea newline", "POST", MOVIE, movie(idea="a\nb"), says="idea"),
    HttpCase("movie segments string", "POST", MOVIE, movie(total_segments="4"), says="total_segments"),
    HttpCase("save not bool", "POST", MOVIE, movie(save_to_files="yes"), says="save_to_files"),
    HttpCase("save number", "POST", MOVIE, movie(save_to_files=1), says="save_to_files"),
    HttpCase("timeout zero", "POST", MOVIE, movie(wait=True, timeout_seconds=0), says="timeout_seconds"),
    HttpCase("timeout huge", "POST", MOVIE, movie(wait=True, timeout_seconds=1e9), says="timeout_seconds"),
    HttpCase("wait string", "POST", MOVIE, movie(wait="no"), says="wait"),
    HttpCase("movie dir escape", "POST", MOVIE, movie(output_directory="../../etc"), says="output_directory"),
    HttpCase("movie unknown field", "POST", MOVIE, movie(genre="noir"), says="unknown field"),
    HttpCase("retry id number", "POST", RETRY, j({"job_id": 7, "wait": False}), says="job_id"),
    HttpCase("retry retries string", "POST", RETRY, j({"job_id": "abc", "max_retries": "3"}), says="max_retries"),
    HttpCase("retry unknown", "POST", RETRY, j({"job_id": "nope-nope", "wait": False}), status=404, says="no job"),
    HttpCase("story bad id", "GET", "/story-jobs/bad%20id", says="job_id"),
    HttpCase("story nul id", "GET", "/story-jobs/a%00b", says="job_id"),
    HttpCase("story unknown", "GET", "/story-jobs/unknown-job", status=404, says="no job"),
    HttpCase("upload wrong type", "POST", "/api/uploads", b"GIF89a", says="Content-Type", headers={"Content-Type": "image/gif"}),
    HttpCase("upload empty", "POST", "/api/uploads", b"", says="body", headers={"Content-Type": "image/png"}),
    HttpCase("upload gif as png", "POST", "/api/uploads", b"GIF89a\x01\x00", says="image/png", headers={"Content-Type": "image/png"}),
    HttpCase("upload jpeg lie", "POST", "/api/uploads", b"<svg onload=alert(1)>", says="image/jpeg", headers={"Content-Type": "image/jpeg"}),
    HttpCase("upload bad name", "POST", "/api/uploads?file_name=a%00b", b"\x89PNG", says="file_name", headers={"Content-Type": "image/png"}),
    HttpCase("upload path name", "POST", "/api/uploads?file_name=..%2F..%2Fx.png", b"\x89PNG", says="file_name", headers={"Content-Type": "image/png"}),
    HttpCase("webhook unsigned", "POST", "/webhooks/fal", j({"request_id": "r1"}), status=401, says="signed"),
    HttpCase("webhook forged sig", "POST", "/webhooks/fal?task=1&attempt=1&sig=00", j({"request_id": "r1"}), status=401, says="signed"),
    HttpCase("unknown route", "GET", "/admin", status=404),
    HttpCase("wrong verb", "GET", GENERATE, status=405),
]  # fmt: skip
