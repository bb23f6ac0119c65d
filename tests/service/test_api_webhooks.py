"""Webhooks end to end: a job's outcome reaches a real local receiver, signed, with retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.service.conftest import jpeg_bytes


class Receiver:
    """A local HTTP endpoint that records requests and fails the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"got {len(self.requests)} of {count} requests"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def standard_webhooks_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An independent check of the Standard Webhooks signature (not our implementation)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        sig.split(",", 1)[1] == expected
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def test_succeeded_job_is_delivered_signed_after_a_retry(live_server, receiver):
    """The receiver fails once; the retry carries the same id and a valid signature."""
    hook_target = receiver(fail_first=1)
    with live_server(webhook_allow_private=True, public_url="https://maker.example") as server:
        created = server.client.post(
            "/v1/webhooks", json={"url": hook_target.url, "events": ["job.succeeded"]}
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        job_id = server.submit().json()["id"]
        server.wait_job(job_id)
        hook_target.wait_for(2)

        (first_headers, _), (headers, body) = hook_target.requests[:2]
        assert first_headers["webhook-id"] == headers["webhook-id"]
        assert standard_webhooks_valid(hook["secret"], headers, body)
        assert not standard_webhooks_valid(hook["secret"], headers, body + b" ")
        payload = json.loads(body)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["id"] == job_id
        assert payload["data"]["status"] == "succeeded"
        assert payload["data"]["links"]["results"]["ply"] == (
            f"https://maker.example/v1/jobs/{job_id}/result?format=ply"
        )

        deadline = time.monotonic() + 10
        while True:
            deliveries = server.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
            if deliveries and deliveries[0]["status"] == "succeeded":
                break
            assert time.monotonic() < deadline, deliveries
            time.sleep(0.05)
        attempts = deliveries[0]["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 204]
        listed = server.client.get("/v1/webhooks").json()
        assert [h["id"] for h in listed] == [hook["id"]]
        assert "secret" not in listed[0]
        assert server.client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
        assert server.client.get(f"/v1/webhooks/{hook['id']}").status_code == 404


def test_failed_job_sends_job_failed(live_server, receiver):
    """A job whose stored input turns out unreadable fails and notifies job.failed."""
    hook_target = receiver()
    with live_server(workers=0, webhook_allow_private=True) as api_only:
        api_only.client.post(
            "/v1/webhooks", json={"url": hook_target.url, "events": ["job.failed"]}
        )
        job = api_only.submit(jpeg_bytes(color=(1, 1, 1))).json()
        stored = next((api_only.data_dir / "jobs" / job["id"]).glob("input*"))
    stored.write_bytes(b"no longer an image")  # the disk went bad between submit and run
    with live_server(webhook_allow_private=True) as server:
        final = server.wait_job(job["id"])
        assert final["status"] == "failed"
        assert final["error"]["code"] == "invalid_image"
        hook_target.wait_for(1)
        payload = json.loads(hook_target.requests[0][1])
        assert payload["type"] == "job.failed"
        assert payload["data"]["error"]["code"] == "invalid_image"
