"""The fal queue API driven over HTTP with httpx, as fal-client would send it."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

from services.simulator.app import SimulatorHandle
from services.simulator.stats import payload_hash
from tests.simulator.conftest import APP, ManualClock


async def _submit(http: httpx.AsyncClient, body: object, **kwargs: object) -> dict[str, object]:
    response = await http.post(f"/{APP}", json=body, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


async def test_submit_answers_urls_under_owner_and_alias(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    data = await _submit(http, {"prompt": "a cat"})

    request_id = data["request_id"]
    base = f"{sim.url}/fal-ai/kling-video/requests/{request_id}"
    assert data["response_url"] == base
    assert data["status_url"] == f"{base}/status"
    assert data["cancel_url"] == f"{base}/cancel"
    assert data["queue_position"] == 0


async def test_round_trip_status_then_result_then_file(
    manual_sim: SimulatorHandle, clock: ManualClock
) -> None:
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        data = await _submit(http, {"prompt": "a cat"})
        status_url, response_url = str(data["status_url"]), str(data["response_url"])

        running = await http.get(status_url, params={"logs": "1"})
        assert running.status_code == 202
        assert running.json()["status"] == "IN_PROGRESS"
        assert running.json()["logs"][0]["level"] == "INFO"
        assert running.json()["response_url"] == response_url
        quiet = await http.get(status_url, params={"logs": "false"})
        assert quiet.json() == {"status": "IN_PROGRESS", "logs": None, "response_url": response_url}

        early = await http.get(response_url)
        assert early.status_code == 400
        assert early.json() == {"detail": "Request is still in progress"}

        clock.advance(10)
        done = await http.get(status_url, params={"logs": "0"})
        assert done.status_code == 200
        assert done.json()["status"] == "COMPLETED"
        assert done.json()["metrics"] == {"inference_time": 10.0}

        result = await http.get(response_url)
        assert result.status_code == 200
        video = result.json()["video"]
        assert video["url"] == f"{manual_sim.url}/files/{data['request_id']}.mp4"
        assert video["content_type"] == "video/mp4"
        assert isinstance(result.json()["seed"], int)

        file = await http.get(video["url"])
        assert file.status_code == 200
        assert file.headers["content-type"] == "video/mp4"
        assert len(file.content) == video["file_size"]
        assert file.content[4:8] == b"ftyp"


async def test_unknown_request_is_404(http: httpx.AsyncClient) -> None:
    base = "/fal-ai/kling-video/requests/00000000-0000-4000-8000-000000000000"
    for method, url in (("GET", f"{base}/status"), ("GET", base), ("PUT", f"{base}/cancel")):
        response = await http.request(method, url)
        assert response.status_code == 404
        assert response.json() == {"detail": "Request not found"}
        assert "x-fal-request-id" in response.headers


async def test_request_is_not_found_under_another_app(http: httpx.AsyncClient) -> None:
    data = await _submit(http, {"prompt": "x"})

    response = await http.get(f"/fal-ai/other-app/requests/{data['request_id']}/status")

    assert response.status_code == 404


async def test_cancel_queued_request_completes_it_as_cancelled(
    manual_sim: SimulatorHandle,
) -> None:
    manual_sim.configure(max_concurrency=1)
    async with httpx.AsyncClient(base_url=manual_sim.url) as http:
        await _submit(http, {"prompt": "first"})
        second = await _submit(http, {"prompt": "second"})
        assert second["queue_position"] == 0

        cancel = await http.put(str(second["cancel_url"]))
        assert cancel.status_code == 202
        assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}

        status = await http.get(str(second["status_url"]))
        assert status.json()["status"] == "COMPLETED"
        result = await http.get(str(second["response_url"]))
        assert result.status_code == 400
        assert result.json() == {"detail": "Request was cancelled"}
        again = await http.put(str(second["cancel_url"]))
        assert again.status_code == 400
        assert again.json() == {"status": "ALREADY_COMPLETED"}
        file = await http.get(f"/files/{second['request_id']}.mp4")
        assert file.status_code == 404


async def test_cancel_completed_request_is_already_completed(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=0)
    data = await _submit(http, {"prompt": "x"})

    response = await http.put(str(data["cancel_url"]))

    assert response.status_code == 400
    assert response.json() == {"status": "ALREADY_COMPLETED"}


async def test_zero_latency_is_completed_on_first_status(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=0)
    data = await _submit(http, {"prompt": "x"})

    status = await http.get(str(data["status_url"]))

    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED"


async def test_webhook_query_and_priority_header_are_accepted(http: httpx.AsyncClient) -> None:
    query = urlencode({"fal_webhook": "http://127.0.0.1:9/hook?job=1"})
    response = await http.post(
        f"/{APP}?{query}", json={"prompt": "x"}, headers={"X-Fal-Queue-Priority": "low"}
    )
    assert response.status_code == 200

    bad = await http.post(f"/{APP}", json={"prompt": "x"}, headers={"X-Fal-Queue-Priority": "now"})
    assert bad.status_code == 400


async def test_bad_input_is_rejected_without_creating_a_request(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    not_json = await http.post(
        f"/{APP}", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["loc"] == ["body"]
    not_object = await http.post(f"/{APP}", json=[1, 2])
    assert not_object.status_code == 422
    one_part = await http.post("/kling", json={})
    assert one_part.status_code == 404
    reserved = await http.post("/_sim/nothing", json={})
    assert reserved.status_code == 404

    assert sim.stats()["accepted_requests"] == 0


async def test_submits_are_counted_per_payload(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    await _submit(http, {"prompt": "same", "seed": 1})
    await _submit(http, {"seed": 1, "prompt": "same"})  # key order does not matter
    await _submit(http, {"prompt": "other"})

    stats = sim.stats()
    same = payload_hash({"prompt": "same", "seed": 1})
    assert stats["submits_total"] == 3
    assert stats["accepted_requests"] == 3
    assert stats["submits_by_payload"][same] == 2
    assert stats["duplicate_submits"] == {same: 2}


async def test_key_is_required_when_configured(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(fal_key="fal-secret")

    missing = await http.post(f"/{APP}", json={})
    wrong = await http.post(f"/{APP}", json={}, headers={"Authorization": "Key nope"})
    right = await http.post(f"/{APP}", json={}, headers={"Authorization": "Key fal-secret"})
    status = await http.get(str(right.json()["status_url"]))

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert "detail" in wrong.json()
    assert right.status_code == 200
    assert status.status_code == 401


async def test_public_base_url_and_namespaced_apps(
    sim: SimulatorHandle, http: httpx.AsyncClient
) -> None:
    sim.configure(latency=60, public_base_url="https://queue.sim.example/")

    plain = await _submit(http, {"prompt": "x"})
    namespaced = (await http.post("/workflows/acme/storyboard/v2", json={})).json()

    assert str(plain["status_url"]).startswith("https://queue.sim.example/fal-ai/kling-video/")
    assert namespaced["response_url"] == (
        f"https://queue.sim.example/workflows/acme/storyboard/requests/{namespaced['request_id']}"
    )
    local_status = f"/workflows/acme/storyboard/requests/{namespaced['request_id']}/status"
    assert (await http.get(local_status)).status_code == 202
