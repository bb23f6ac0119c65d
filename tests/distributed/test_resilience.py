"""An API instance of the scale-out mode, in-process, while its backends fail: the expiry
sweep survives Redis and S3 errors (and deletes files before records), /metrics degrades
instead of failing, API-only instances look in the shared cache, the local copies of S3
cache files stay within their budget."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlsharp.config import Settings
from mlsharp.service.jobs import JobRecord, JobStatus


def _finished(job_id: str, hours_ago: float = 1.0) -> JobRecord:
    at = time.time() - hours_ago * 3600
    return JobRecord(
        id=job_id, status=JobStatus.SUCCEEDED, stage="done", created_at=at, finished_at=at
    )


def _store(redis_server):
    from mlsharp.service.jobs.redis import RedisJobStore

    return RedisJobStore(redis_server.client(), "mlsharp")


def test_expiry_sweep_survives_redis_outages(redis_server, tmp_path, monkeypatch, caplog):
    """The sweep fails while Redis is down (ServiceUnavailable), logs it, and purges the
    expired job once Redis is back."""
    from mlsharp.service import app as app_module

    monkeypatch.setattr(app_module, "EXPIRY_SWEEP_SECONDS", 0.05)
    settings = Settings(
        queue=redis_server.url, workers=0, data_dir=tmp_path / "data", result_ttl_hours=0.01
    )
    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="mlsharp.service")
    with TestClient(app_module.create_app(settings)):
        deadline = time.monotonic() + 20
        while "expiry sweep failed" not in caplog.text:
            assert time.monotonic() < deadline, "no sweep ran while Redis was down"
            time.sleep(0.05)
        redis_server.start()
        store = _store(redis_server)
        store.add(_finished("job_old"))
        store.add(_finished("job_new", hours_ago=0.0))
        while store.get("job_old") is not None:
            assert time.monotonic() < deadline, "the sweep stopped after the outage"
            time.sleep(0.05)
        assert store.get("job_new") is not None


def test_purge_deletes_files_before_the_record(redis_server, moto_s3, tmp_path):
    """S3 refuses the deletion: the record stays (the next sweep retries) instead of
    leaving objects nothing points to."""
    from mlsharp.errors import ServiceUnavailable
    from mlsharp.service.backends import build_state
    from mlsharp.service.jobs.runner import purge_expired

    env = moto_s3.env()
    settings = Settings(
        queue=redis_server.url,
        data_dir=tmp_path / "data",
        storage="s3",
        s3_endpoint_url=env["MLSHARP_S3_ENDPOINT_URL"],
        s3_bucket="no-such-bucket",
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        result_ttl_hours=0.01,
    )
    state = build_state(settings)
    try:
        state.store.add(_finished("job_old"))
        with pytest.raises(ServiceUnavailable, match="NoSuchBucket"):
            purge_expired(state)
        assert state.store.get("job_old") is not None
    finally:
        state.close()


def test_metrics_degrade_while_redis_is_down(redis_server, tmp_path):
    settings = Settings(queue=redis_server.url, workers=0, data_dir=tmp_path / "data")
    from mlsharp.service.app import create_app

    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
        assert "mlsharp_queue_depth 0.0" in text
        redis_server.stop()
        response = client.get("/metrics")
        assert response.status_code == 200, response.text
        text = response.text
        assert "mlsharp_queue_depth" not in text and "mlsharp_cache_entries" not in text
        assert 'mlsharp_metrics_probe_failures_total{probe="jobs"} 1.0' in text
        assert 'mlsharp_metrics_probe_failures_total{probe="cache"} 1.0' in text
        assert "mlsharp_http_requests_total" in text and "mlsharp_device_memory_bytes" in text


def test_s3_cache_copies_stay_within_their_budget(moto_s3, tmp_path):
    from mlsharp.service.files.s3 import S3Blobs

    env = moto_s3.env()
    settings = Settings(
        storage="s3",
        s3_endpoint_url=env["MLSHARP_S3_ENDPOINT_URL"],
        s3_bucket=moto_s3.bucket,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_prefix="budget/",
    )
    writer = S3Blobs(settings, tmp_path / "writer")
    reader = S3Blobs(settings, tmp_path / "reader", local_budget=250)
    src = tmp_path / "r.ply"
    src.write_bytes(b"x" * 100)
    for key in ("aa", "bb", "cc"):
        writer.put_file(f"{key}/result.ply", src)
    old = time.time() - 3600
    for key in ("aa", "bb"):
        path = reader.local_path(f"{key}/result.ply")
        assert path is not None and path.read_bytes() == b"x" * 100
        os.utime(path, (old, old))  # copies in use are never pruned; these are old
    os.utime(reader.local_path("bb/result.ply"), None)  # bb used again: kept over aa
    assert reader.local_path("cc/result.ply") is not None
    kept = sorted(str(p.relative_to(tmp_path / "reader")) for p in _files(tmp_path / "reader"))
    assert kept == ["bb/result.ply", "cc/result.ply"]
    assert reader.local_path("aa/result.ply") is not None  # downloaded again on demand


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]
