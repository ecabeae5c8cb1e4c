"""fal storage: CDN tokens, single and multipart uploads, files served back, the byte budget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fal_client.auth import AuthCredentials
from fal_client.client import AsyncCDNTokenManager, AsyncMultipartUpload

from services.simulator.app import SimulatorHandle

KEY = "fal-storage-key"
TOKEN_PATH = "/storage/auth/token?storage_type=fal-cdn-v3"


@pytest.fixture
async def keyed(sim: SimulatorHandle) -> SimulatorHandle:
    sim.configure(fal_key=KEY)
    return sim


async def _token(http: httpx.AsyncClient, key: str = KEY) -> httpx.Response:
    return await http.post(TOKEN_PATH, json={}, headers={"Authorization": f"Key {key}"})


async def _upload(
    http: httpx.AsyncClient, data: bytes, auth: str, name: str = "a.png"
) -> httpx.Response:
    headers = {"Authorization": auth, "Content-Type": "image/png", "X-Fal-File-Name": name}
    return await http.post("/files/upload", content=data, headers=headers)


@pytest.fixture
async def bearer(keyed: SimulatorHandle, http: httpx.AsyncClient) -> AsyncIterator[str]:
    token = (await _token(http)).json()
    yield f"{token['token_type']} {token['token']}"


async def test_token_needs_the_fal_key(keyed: SimulatorHandle, http: httpx.AsyncClient) -> None:
    wrong = await _token(http, "nope")
    right = await _token(http)

    assert wrong.status_code == 401
    assert right.status_code == 200
    token = right.json()
    assert token["token_type"] == "Bearer"
    assert token["base_url"] == keyed.url
    assert token["expires_at"].endswith("+00:00")
    assert keyed.stats()["calls"] == {"upload_token": 2}


async def test_upload_with_token_then_get_it_back(
    keyed: SimulatorHandle, http: httpx.AsyncClient, bearer: str
) -> None:
    uploaded = await _upload(http, b"pixels", bearer, name="../my frame!.png")

    assert uploaded.status_code == 200
    url = uploaded.json()["access_url"]
    assert url.startswith(f"{keyed.url}/cdn/")
    assert url.endswith("/my_frame_.png")  # no path, safe characters only
    served = await http.get(url)
    assert served.content == b"pixels"
    assert served.headers["content-type"] == "image/png"
    stats = keyed.stats()["uploads"]
    assert (stats["files"], stats["bytes"], stats["stored_files"]) == (1, 6, 1)


async def test_upload_refuses_a_bad_token_and_takes_the_key(
    keyed: SimulatorHandle, http: httpx.AsyncClient, bearer: str
) -> None:
    forged = bearer[:-4] + "0000"

    assert (await _upload(http, b"x", forged)).status_code == 401
    assert (await _upload(http, b"x", "Bearer 1.abc")).status_code == 401  # long expired
    assert (await _upload(http, b"x", f"Key {KEY}")).status_code == 200


async def test_unknown_file_is_404(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    url = (await _upload(http, b"x", "")).json()["access_url"]

    assert (await http.get("/cdn/0123/a.png")).status_code == 404
    assert (await http.get(url.replace("a.png", "b.png"))).status_code == 404


async def test_no_name_gets_one_from_the_content_type(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/files/upload", content=b"x", headers={"Content-Type": "image/webp"}
    )

    assert response.json()["access_url"].endswith("/upload.webp")


async def test_oldest_files_make_room_and_too_big_is_413(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(upload_store_bytes=2048)
    urls = [(await _upload(http, bytes([n]) * 1000, "")).json()["access_url"] for n in range(3)]
    too_big = await _upload(http, b"x" * 2049, "")

    assert too_big.status_code == 413
    assert (await http.get(urls[0])).status_code == 404
    assert (await http.get(urls[2])).content == b"\x02" * 1000
    stats = sim.stats()["uploads"]
    assert (stats["files"], stats["stored_files"], stats["evicted"]) == (3, 2, 1)
    assert stats["stored_bytes"] == 2000


async def test_reset_forgets_files(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    url = (await _upload(http, b"x", "")).json()["access_url"]

    sim.reset()

    assert (await http.get(url)).status_code == 404
    assert sim.stats()["uploads"]["files"] == 0


async def test_rules_match_the_file_name(sim: SimulatorHandle, http: httpx.AsyncClient) -> None:
    sim.configure(rules=[{"endpoint": "upload", "match": "cursed", "fault": "503"}])

    assert (await _upload(http, b"x", "", name="cursed.png")).status_code == 503
    assert (await _upload(http, b"x", "", name="fine.png")).status_code == 200
    assert sim.stats()["faults_injected"] == {"upload": {"503": 1}}


class _SimTokens(AsyncCDNTokenManager):
    """fal-client's own token manager, asking the simulator instead of rest.fal.ai."""

    def __init__(self, url: str) -> None:
        super().__init__(AuthCredentials("Key", KEY))
        self._url = f"{url}{TOKEN_PATH}"


async def test_multipart_upload_with_the_real_fal_client(keyed: SimulatorHandle) -> None:
    data = bytes(range(256)) * 10  # three parts of 1000 bytes, the last one short

    async with httpx.AsyncClient(timeout=5) as http:
        url = await AsyncMultipartUpload.save(
            client=http,
            token_manager=_SimTokens(keyed.url),
            file_name="big.webp",
            data=data,
            content_type="image/webp",
            chunk_size=1000,
        )
        served = await http.get(url)

    assert url.startswith(f"{keyed.url}/cdn/") and url.endswith("/big.webp")
    assert served.content == data
    assert served.headers["content-type"] == "image/webp"
    stats = keyed.stats()
    # create, three parts, complete
    assert stats["calls"] == {"upload_token": 1, "upload": 5}
    assert stats["uploads"]["files"] == 1
    assert stats["uploads"]["multipart_pending"] == 0


async def test_multipart_complete_checks_the_parts(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    created = (
        await http.post("/files/upload/multipart", headers={"X-Fal-File-Name": "m.png"})
    ).json()
    base = f"{created['access_url']}/multipart/{created['uploadId']}"
    part = await http.put(f"{base}/1", content=b"abc")
    etag = part.headers["etag"]

    bad_number = await http.put(f"{base}/0", content=b"abc")
    wrong_tag = await http.post(
        f"{base}/complete", json={"parts": [{"partNumber": 1, "etag": '"00"'}]}
    )
    missing = await http.post(f"{base}/complete", json={"parts": [{"partNumber": 2}]})
    unknown = await http.put(base.replace(created["uploadId"], "nope") + "/1", content=b"x")
    done = await http.post(f"{base}/complete", json={"parts": [{"partNumber": 1, "etag": etag}]})

    assert (bad_number.status_code, wrong_tag.status_code, missing.status_code) == (400, 400, 400)
    assert unknown.status_code == 404
    assert done.json()["access_url"] == created["access_url"]
    assert (await http.get(created["access_url"])).content == b"abc"
