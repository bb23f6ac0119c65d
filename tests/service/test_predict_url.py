"""``POST /v1/predict`` answers absolute URLs: the earlier product's clients download
``url`` as it is (a relative one broke them)."""

from __future__ import annotations

import httpx

from tests.service.conftest import jpeg_bytes


def predict(client: httpx.Client, color: tuple[int, int, int]) -> dict:
    files = {"file": ("scene.jpg", jpeg_bytes(color=color), "image/jpeg")}
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_url_is_absolute_and_downloads_as_is(server):
    body = predict(server.client, (10, 200, 30))
    assert body["url"] == f"{server.url}/v1/jobs/{body['task_id']}/result?format=ply"
    assert all(url.startswith(f"{server.url}/v1/jobs/") for url in body["urls"].values())
    download = httpx.get(body["url"], timeout=30)  # no base URL: as a plain client would
    assert download.status_code == 200 and download.content.startswith(b"ply\n")


def test_predict_url_uses_public_url_when_set(live_server):
    with live_server(public_url="https://splats.example.com") as server:
        body = predict(server.client, (10, 20, 230))
    assert body["url"] == (
        f"https://splats.example.com/v1/jobs/{body['task_id']}/result?format=ply"
    )
