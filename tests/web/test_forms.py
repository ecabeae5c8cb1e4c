"""The pages' forms over plain HTTP: CSRF and Origin checks, cookies, redirects, uploads, paging,
escaping and the security headers, against the real gateway."""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from orchestrator.v1 import jobs_pb2 as pb

from services.simulator.app import SimulatorHandle
from tests.cli.test_cli_upload import tiny_png
from tests.support.client import watch_to_end
from tests.support.inproc import inproc_stack, stack_settings
from tests.web.conftest import ARENA, SUBMIT_TOKEN, csrf_of, token_setting

JOB_PAGE = re.compile(r"^/jobs/([0-9a-f-]{36})\?done=started$")


async def test_forms_need_the_csrf_token_and_this_sites_origin(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with inproc_stack(stack_settings(tmp_path, sim), workers=()) as stack:
        base = stack.http_url
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            token = await csrf_of(http)
            form = {"battle_arena_url": ARENA, "total_segments": "2", "csrf_token": token}
            no_token = await http.post(
                "/new/video", data={**form, "csrf_token": ""}, headers={"Origin": base}
            )
            wrong_token = await http.post(
                "/new/video", data={**form, "csrf_token": "x" * 43}, headers={"Origin": base}
            )
            other_site = await http.post(
                "/new/video", data=form, headers={"Origin": "https://evil.example"}
            )
            other_referer = await http.post(
                "/new/video", data=form, headers={"Referer": "https://evil.example/page"}
            )
            no_origin = await http.post("/new/video", data=form)
            null_origin = await http.post("/new/video", data=form, headers={"Origin": "null"})
            assert await stack.gateway.core.list() == ([], "")
            by_referer = await http.post(
                "/new/video", data=form, headers={"Referer": f"{base}/new/video"}
            )
            ok = await http.post("/new/video", data=form, headers={"Origin": base})
        # Another browser (no CSRF cookie) replaying a token it saw is refused too.
        async with httpx.AsyncClient(base_url=base, timeout=30) as stranger:
            replayed = await stranger.post("/new/video", data=form, headers={"Origin": base})

    for refused in (no_token, wrong_token, other_site, other_referer, no_origin, null_origin):
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"].startswith("text/html")
    assert "did not come from this site" in no_token.text
    assert "from another site" in other_site.text
    assert replayed.status_code == 403
    assert by_referer.status_code == ok.status_code == 303
    assert JOB_PAGE.match(ok.headers["location"])
    assert by_referer.headers["location"] != ok.headers["location"]  # two forms, two jobs


async def test_the_same_form_sent_twice_starts_one_job(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    async with inproc_stack(stack_settings(tmp_path, sim), workers=()) as stack:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http:
            page = await http.get("/new/story")
            key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
            assert key is not None
            form = {
                "csrf_token": await csrf_of(http, "/new/story"),
                "idempotency_key": key.group(1),
                "idea": "A heist\non the moon",
                "total_segments": "4",
                "segments_per_set": "2",
            }
            first = await http.post("/new/story", data=form, headers={"Origin": stack.http_url})
            second = await http.post("/new/story", data=form, headers={"Origin": stack.http_url})
        jobs, _ = await stack.gateway.core.list()
    assert first.status_code == second.status_code == 303
    assert first.headers["location"].endswith("?done=started")
    assert second.headers["location"].endswith("?done=existing")
    assert len(jobs) == 1 and jobs[0].story.idea == "A heist on the moon"


async def test_image_upload_through_the_form(tmp_path: Path, sim: SimulatorHandle) -> None:
    image = tiny_png()
    async with (
        inproc_stack(stack_settings(tmp_path, sim)) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http,
    ):
        token = await csrf_of(http)
        fields = {"csrf_token": token, "total_segments": "2", "battle_arena_url": ""}
        sent = await http.post(
            "/new/video",
            data=fields,
            files={"image": ("arena.png", image, "image/png")},
            headers={"Origin": stack.http_url},
        )
        assert sent.status_code == 303, sent.text
        job_id = JOB_PAGE.match(sent.headers["location"]).group(1)  # type: ignore[union-attr]
        events = await watch_to_end(stack.stub, job_id)
        job = await stack.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        stored = await http.get(job.video.battle_arena_url)
        not_an_image = await http.post(
            "/new/video",
            data=fields,
            files={"image": ("arena.gif", b"GIF89a", "image/gif")},
            headers={"Origin": stack.http_url},
        )
        both = await http.post(
            "/new/video",
            data={**fields, "battle_arena_url": ARENA},
            files={"image": ("arena.png", image, "image/png")},
            headers={"Origin": stack.http_url},
        )
    assert events[-1].job_status == pb.JOB_STATUS_COMPLETED
    assert job.video.battle_arena_url.startswith(sim.url)
    assert all(t.status == pb.TASK_STATUS_SUCCEEDED for t in job.tasks)
    assert stored.content == image
    assert not_an_image.status_code == 400 and "image/gif" in not_an_image.text
    assert 'id="image" name="image" aria-invalid="true"' in not_an_image.text
    assert both.status_code == 400 and "not both" in both.text


async def test_pages_redirect_to_login_and_the_cookie_is_secure_over_https(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    cert, key = _self_signed(tmp_path)
    settings = stack_settings(
        tmp_path, sim, auth_tokens=token_setting(), tls_cert_file=cert, tls_key_file=key
    )
    verify = ssl.create_default_context(cafile=cert)
    async with inproc_stack(settings, workers=()) as stack:
        base = f"https://localhost:{stack.gateway.http_port}"
        async with httpx.AsyncClient(base_url=base, verify=verify, timeout=30) as http:
            home = await http.get("/")
            job = await http.get("/jobs/abc?x=1")
            fragment = await http.get("/jobs/abc/panel")
            by_header = await http.get("/", headers={"Authorization": f"Bearer {SUBMIT_TOKEN}"})
            page = await http.get("/login?next=//evil.example/x")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            login = await http.post(
                "/login",
                data={"csrf_token": token.group(1), "token": SUBMIT_TOKEN, "next": "/new/video"},
                headers={"Origin": base},
            )
            signed_in = await http.get("/new/video")
            logout = await http.post(
                "/logout", data={"csrf_token": token.group(1)}, headers={"Origin": base}
            )
            after = await http.get("/")

    assert (home.status_code, home.headers["location"]) == (303, "/login?next=/")
    redirect = urlsplit(job.headers["location"])
    assert (redirect.path, parse_qs(redirect.query)) == ("/login", {"next": ["/jobs/abc?x=1"]})
    assert fragment.status_code == 401  # the page's script reloads; no redirect for it
    assert by_header.status_code == 200 and "alice" in by_header.text
    assert 'name="next" value="/"' in page.text  # never another host
    csrf_cookie = by_header.headers["set-cookie"]
    assert csrf_cookie.startswith("orchestrator_csrf=") and "Secure" in csrf_cookie
    assert login.status_code == 303 and login.headers["location"] == "/new/video"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"orchestrator_token={SUBMIT_TOKEN};")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert attribute in cookie
    assert signed_in.status_code == 200 and "Signed in as" in signed_in.text
    assert logout.status_code == 303 and "Max-Age=0" in logout.headers["set-cookie"]
    assert after.status_code == 303


async def test_list_filters_paging_and_headers(tmp_path: Path, sim: SimulatorHandle) -> None:
    async with inproc_stack(stack_settings(tmp_path, sim), workers=()) as stack:
        for n in range(27):
            await stack.stub.StartVideoJob(
                pb.StartVideoJobRequest(
                    battle_arena_url=ARENA, total_segments=1, prompt=f"<b>job {n}</b>"
                )
            )
        story = await stack.stub.StartStoryJob(
            pb.StartStoryJobRequest(idea="<script>alert(1)</script>", total_segments=2)
        )
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http:
            first = await http.get("/")
            older = re.search(r'href="/\?page=([^"]+)" rel="next"', first.text)
            assert older is not None
            second = await http.get("/", params={"page": older.group(1)})
            rows = await http.get("/", params={"page": older.group(1), "partial": "rows"})
            stories = await http.get("/", params={"kind": "story"})
            queued = await http.get("/", params=[("status", "queued"), ("status", "running")])
            bad_kind = await http.get("/", params={"kind": "<x>"})
            bad_page = await http.get("/", params={"page": "not-a-token"})
            story_page = await http.get(f"/jobs/{story.job_id}")
            missing = await http.get("/jobs/no-such-job")
            unknown = await http.get("/nowhere/at/all")

    assert first.text.count('<tr id="job-') == 25
    assert second.text.count('<tr id="job-') == 3
    assert rows.text.startswith('<tbody id="job-rows"') and rows.text.count("<tr") == 3
    assert stories.text.count('<tr id="job-') == 1 and story.job_id in stories.text
    assert queued.text.count('<tr id="job-') == 25
    assert bad_kind.status_code == 400 and "&lt;x&gt;" not in bad_kind.text
    assert bad_page.status_code == 400 and "page_token" in bad_page.text
    assert "<script>alert(1)</script>" not in story_page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in story_page.text
    assert missing.status_code == 404 and "no job" in missing.text
    assert unknown.status_code == 404  # not a page: the API's plain answer
    headers = first.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


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
