"""Access control over real HTTP: API keys, per-key jobs, rate limits, the webhook SSRF guard.

Also checks that ``mlsharp config show`` never prints an API key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import LiveServer, jpeg_bytes, run_live_server
from tests.service.test_api_errors import assert_error

K1 = {"Authorization": "Bearer k1"}
K2 = {"X-API-Key": "k2"}
#: Routes that always need a key once keys are configured (method, path).
PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("DELETE", "/v1/jobs/job_x"),
    ("GET", "/v1/jobs/job_x/result"),
    ("GET", "/v1/jobs/job_x/events"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_x"),
    ("POST", "/v1/predict"),
    ("GET", "/v1/webhooks"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/cache"),
    ("POST", "/v1/cache/clear"),
    ("GET", "/v1/stats"),
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[LiveServer]:
    """A server with keys k1 and k2 and no workers (jobs stay queued)."""
    with run_live_server(
        tmp_path_factory.mktemp("keyed"), tiny_checkpoint, api_keys=["k1", "k2"], workers=0
    ) as live:
        yield live


def _call(server: LiveServer, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    return server.client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_missing_key_is_401(keyed: LiveServer, method: str, path: str) -> None:
    """Without a key every protected route is 401 unauthorized (before anything else)."""
    assert_error(_call(keyed, method, path, {}), 401, "unauthorized")


def test_missing_key_names_the_auth_scheme(keyed: LiveServer) -> None:
    """A 401 answer tells the client how to authenticate (``WWW-Authenticate: Bearer``)."""
    response = keyed.client.get("/v1/jobs")
    assert_error(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer k3"},
        {"X-API-Key": "K1"},
        {"Authorization": "Bearer k1x"},
        {"X-API-Key": "k1 k2"},
    ],
    ids=["bearer-unknown", "wrong-case", "prefix", "two-keys"],
)
def test_wrong_key_is_403(keyed: LiveServer, headers: dict[str, str]) -> None:
    """A key that is not configured is 403 forbidden."""
    assert_error(_call(keyed, "GET", "/v1/jobs", headers), 403, "forbidden")


def test_empty_or_non_bearer_authorization_counts_as_missing(keyed: LiveServer) -> None:
    """``Authorization: Basic ...`` or an empty bearer token is no key at all: 401."""
    for headers in ({"Authorization": "Basic azE6"}, {"Authorization": "Bearer"}):
        assert_error(_call(keyed, "GET", "/v1/jobs", headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [K1, K2, {"X-API-Key": "k1"}, {"Authorization": "bearer k2"}],
    ids=["bearer-k1", "x-api-key-k2", "x-api-key-k1", "lowercase-bearer-k2"],
)
def test_valid_keys_are_accepted(keyed: LiveServer, headers: dict[str, str]) -> None:
    """``Authorization: Bearer KEY`` and ``X-API-Key: KEY`` both work, for every key."""
    response = _call(keyed, "GET", "/v1/jobs", headers)
    assert response.status_code == 200, response.text
    assert _call(keyed, "GET", "/v1/stats", headers).status_code == 200


def test_health_ready_and_metrics_are_open_by_default(keyed: LiveServer) -> None:
    """Probes and Prometheus need no key unless protect_health/protect_metrics say so."""
    for path in ("/v1/health", "/v1/ready", "/metrics"):
        assert keyed.client.get(path).status_code == 200, path


def test_protected_health_and_metrics_need_a_key(live_server) -> None:
    """With protect_health and protect_metrics the probes and /metrics want a valid key."""
    with live_server(
        api_keys=["k1"], protect_health=True, protect_metrics=True, workers=0
    ) as running:
        for path in ("/v1/health", "/v1/ready", "/metrics"):
            assert_error(running.client.get(path), 401, "unauthorized")
            assert_error(running.client.get(path, headers={"X-API-Key": "nope"}), 403)
            assert running.client.get(path, headers=K1).status_code == 200, path


def test_jobs_belong_to_their_key(keyed: LiveServer) -> None:
    """A job made with k1 is 404 for k2 everywhere and absent from k2's list."""
    created = keyed.submit(jpeg_bytes(color=(9, 99, 199)), headers=K1)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert keyed.client.get(f"/v1/jobs/{job_id}", headers=K1).status_code == 200
    for method, suffix in (("GET", ""), ("GET", "/result"), ("GET", "/events"), ("DELETE", "")):
        response = _call(keyed, method, f"/v1/jobs/{job_id}{suffix}", K2)
        assert job_id in assert_error(response, 404, "not_found")["message"]
    listed_k2 = keyed.client.get("/v1/jobs", headers=K2).json()
    assert job_id not in [job["id"] for job in listed_k2["items"]]
    listed_k1 = keyed.client.get("/v1/jobs", headers=K1).json()
    assert job_id in [job["id"] for job in listed_k1["items"]]
    # k2's failed DELETE left the job alone.
    assert keyed.client.get(f"/v1/jobs/{job_id}", headers=K1).json()["status"] == "queued"


def test_batches_belong_to_their_key(keyed: LiveServer) -> None:
    """A batch made with k1 is 404 for k2."""
    files = [("files", ("a.jpg", jpeg_bytes(color=(1, 200, 3)), "image/jpeg"))]
    created = keyed.client.post("/v1/batches", files=files, headers=K1)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    assert keyed.client.get(f"/v1/batches/{batch_id}", headers=K1).status_code == 200
    assert_error(keyed.client.get(f"/v1/batches/{batch_id}", headers=K2), 404, "not_found")


def test_webhooks_belong_to_their_key(live_server) -> None:
    """A webhook registered with k1 is invisible to k2: not listed, 404 to get or delete."""
    with live_server(api_keys=["k1", "k2"], workers=0, webhook_allow_private=True) as running:
        hook = running.client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/k1"}, headers=K1
        )
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["id"]
        listed = running.client.get("/v1/webhooks", headers=K2).json()
        assert hook_id not in [h["id"] for h in listed]
        for method, suffix in (("GET", ""), ("GET", "/deliveries"), ("DELETE", "")):
            response = _call(running, method, f"/v1/webhooks/{hook_id}{suffix}", K2)
            assert_error(response, 404, "not_found")
        assert [h["id"] for h in running.client.get("/v1/webhooks", headers=K1).json()] == [hook_id]
        assert running.client.get(f"/v1/webhooks/{hook_id}", headers=K1).status_code == 200


def test_rate_limit_is_per_key(live_server) -> None:
    """With 3/minute the 4th request is 429 with an integer Retry-After; k2 is unaffected."""
    with live_server(api_keys=["k1", "k2"], rate_limit="3/minute", workers=0) as running:
        for _ in range(3):
            assert running.client.get("/v1/jobs", headers=K1).status_code == 200
        limited = running.client.get("/v1/jobs", headers=K1)
        assert_error(limited, 429, "rate_limited")
        retry_after = limited.headers["retry-after"]
        assert re.fullmatch(r"[0-9]+", retry_after) and 1 <= int(retry_after) <= 60
        # Another key has its own bucket; the open probes are not counted at all.
        for _ in range(3):
            assert running.client.get("/v1/jobs", headers=K2).status_code == 200
        assert running.client.get("/v1/health").status_code == 200
        assert_error(running.client.get("/v1/stats", headers=K1), 429, "rate_limited")


def test_rate_limit_without_keys_counts_per_client(live_server) -> None:
    """An open service limits by client address: the 3rd request of 2/minute is 429."""
    with live_server(rate_limit="2/minute", workers=0) as running:
        assert running.client.get("/v1/jobs").status_code == 200
        assert running.client.get("/v1/stats").status_code == 200
        assert_error(running.client.get("/v1/jobs"), 429, "rate_limited")


@pytest.fixture(scope="module")
def open_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[LiveServer]:
    """A default (open, SSRF-guarded) server without workers."""
    with run_live_server(tmp_path_factory.mktemp("open"), tiny_checkpoint, workers=0) as live:
        yield live


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "ftp://93.184.216.34/hook",
        "http://user:pw@93.184.216.34/hook",
        "not a url",
    ],
)
def test_webhook_ssrf_targets_are_refused(open_server: LiveServer, url: str) -> None:
    """Loopback, link-local, private and odd URLs are 422 webhook_url_refused by default."""
    response = open_server.client.post("/v1/webhooks", json={"url": url})
    assert_error(response, 422, "webhook_url_refused")
    listed = open_server.client.get("/v1/webhooks").json()
    assert url not in [hook["url"] for hook in listed]


def test_webhook_private_url_allowed_when_configured(live_server) -> None:
    """With webhook_allow_private a loopback URL is 201 with a ``whsec_`` secret."""
    with live_server(webhook_allow_private=True, workers=0) as running:
        created = running.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["secret"].startswith("whsec_")
        assert body["url"] == "http://127.0.0.1:9/x"
        assert set(body["events"]) == {"job.succeeded", "job.failed"}
        shown = running.client.get(f"/v1/webhooks/{body['id']}").json()
        assert "secret" not in shown
        assert body["secret"] not in running.client.get("/v1/webhooks").text


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"url": "http://93.184.216.34/h", "extra": 1}, "validation_error"),
        ({"url": 12345}, "validation_error"),
        ({"url": ["http://93.184.216.34/h"]}, "validation_error"),
        ({}, "validation_error"),
        ({"url": ""}, "validation_error"),
        ({"url": "http://93.184.216.34/h", "events": "job.succeeded"}, "validation_error"),
        ({"url": "http://93.184.216.34/h", "events": []}, "validation_error"),
        ({"url": "http://93.184.216.34/h", "events": ["job.exploded"]}, "invalid_event"),
    ],
    ids=[
        "extra-field",
        "url-int",
        "url-list",
        "no-url",
        "empty-url",
        "events-string",
        "no-events",
        "unknown-event",
    ],
)
def test_webhook_body_is_strict(open_server: LiveServer, payload: dict, code: str) -> None:
    """Unknown fields, wrong types and unknown events are 422, never coerced."""
    assert_error(open_server.client.post("/v1/webhooks", json=payload), 422, code)


def test_webhook_body_not_json_is_422(open_server: LiveServer) -> None:
    """A body that is not JSON is 422 validation_error."""
    response = open_server.client.post(
        "/v1/webhooks", content=b"url=http://x", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "validation_error")


def test_config_show_masks_api_keys(tmp_path: Path) -> None:
    """``mlsharp config show`` prints the keys masked, never the keys themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_API_KEYS"] = "secret1,another-secret-2"
    env["MLSHARP_DATA_DIR"] = str(tmp_path / "data")
    config = tmp_path / "settings.yaml"
    config.write_text("api_keys: [file-secret-3]\n")
    for extra in ([], ["--config", str(config)]):
        shown = subprocess.run(
            [sys.executable, "-m", "mlsharp", "config", "show", *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        output = shown.stdout + shown.stderr
        for secret in ("secret1", "another-secret-2", "file-secret-3"):
            assert secret not in output
        assert "api_keys" in output and "********" in output
    env.pop("MLSHARP_API_KEYS")
    from_file = subprocess.run(
        [sys.executable, "-m", "mlsharp", "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert from_file.returncode == 0, from_file.stderr
    assert "file-secret-3" not in from_file.stdout + from_file.stderr
    assert "********" in from_file.stdout
