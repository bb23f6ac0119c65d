"""/metrics reflects requests, stages, queue and cache; expired jobs are purged; /v1/stats."""

from __future__ import annotations

import re
import time

from mlsharp.service.jobs.runner import purge_expired
from tests.service.conftest import jpeg_bytes


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (labels matched exactly)."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels}")


def test_metrics_after_one_job_and_a_cache_hit(server):
    """Request counts by route template, stage histograms, cache and queue gauges."""
    job_id = server.submit(jpeg_bytes(color=(5, 6, 7))).json()["id"]
    server.wait_job(job_id)
    again = server.submit(jpeg_bytes(color=(5, 6, 7))).json()
    assert again["cached"] is True
    server.client.get("/v1/jobs/nope")

    text = server.client.get("/metrics").text
    assert (
        _sample(text, "mlsharp_http_requests_total", method="POST", route="/v1/jobs", status="202")
        == 2
    )
    assert (
        _sample(
            text,
            "mlsharp_http_requests_total",
            method="GET",
            route="/v1/jobs/{job_id}",
            status="404",
        )
        == 1
    )
    for stage in ("decode", "preprocess", "inference", "postprocess", "write"):
        assert _sample(text, "mlsharp_stage_duration_seconds_count", stage=stage) == 1
        assert _sample(text, "mlsharp_stage_duration_seconds_sum", stage=stage) > 0
    assert _sample(text, "mlsharp_queue_depth") == 0
    assert _sample(text, "mlsharp_jobs_running") == 0
    assert _sample(text, "mlsharp_jobs", status="succeeded") == 2
    assert _sample(text, "mlsharp_jobs_finished_total", status="succeeded") == 2
    assert _sample(text, "mlsharp_cache_hits") == 1
    assert _sample(text, "mlsharp_cache_entries") == 1
    assert _sample(text, "mlsharp_cache_bytes") > 0
    assert _sample(text, "mlsharp_cache_lookups_total", outcome="hit") == 1
    assert _sample(text, "mlsharp_device_memory_bytes", kind="process_rss") > 0


def test_stats_and_readiness(server):
    """/v1/stats and /v1/ready describe the loaded model and the queue."""
    ready = server.client.get("/v1/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "device": "cpu", "preset": "tiny", "error": None}
    stats = server.client.get("/v1/stats").json()
    assert stats["model_loaded"] is True
    assert stats["device"] == "cpu"
    assert stats["queue_depth"] == 0
    assert set(stats["jobs"]) == {"queued", "running", "succeeded", "failed", "canceled"}
    assert stats["uptime_seconds"] >= 0


def test_unloadable_model_is_not_ready_and_keeps_jobs_queued(live_server, tmp_path):
    """A bad checkpoint: /v1/ready says why (503), submitted jobs wait instead of failing."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with live_server(checkpoint=str(bad)) as server:
        ready = server.client.get("/v1/ready")
        assert ready.status_code == 503
        assert "bad.pt" in ready.json()["error"]
        job_id = server.submit().json()["id"]
        time.sleep(0.3)
        assert server.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_expired_jobs_are_purged_with_their_files(server):
    """Finished jobs older than result_ttl_hours disappear; newer ones stay."""
    old = server.submit(jpeg_bytes(color=(10, 0, 0))).json()["id"]
    new = server.submit(jpeg_bytes(color=(0, 10, 0))).json()["id"]
    server.wait_job(old)
    server.wait_job(new)
    state = server.state
    ttl = state.settings.result_ttl_hours * 3600
    state.store.update(old, finished_at=time.time() - ttl - 60)
    assert purge_expired(state) == 1
    assert server.client.get(f"/v1/jobs/{old}").status_code == 404
    assert not (server.data_dir / "jobs" / old).exists()
    assert server.client.get(f"/v1/jobs/{new}/result?format=ply").status_code == 200
