"""Prometheus figures in the scale-out mode: the API's /metrics shows the cluster's queue
(from Redis); a worker's --metrics-port shows its runs, stage times and failures, not the
cluster's figures (summing every target would count the queue once per process)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.distributed.conftest import free_port, submit, wait_jobs

pytestmark = pytest.mark.slow


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_queue_depth_at_the_api_and_worker_metrics(cluster):
    api = cluster.api()
    ids = [submit(api.url, (60 * i, 50, 200 - 60 * i)) for i in range(3)]  # 3 photos
    text = httpx.get(f"{api.url}/metrics").text
    assert _value(text, "mlsharp_queue_depth") == 3
    port = free_port()
    cluster.worker("--metrics-port", str(port))
    wait_jobs([api.url], ids)
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        if 'mlsharp_jobs_finished_total{status="succeeded"} 3.0' in text or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert 'mlsharp_jobs_finished_total{status="succeeded"} 3.0' in text
    assert 'mlsharp_worker_job_duration_seconds_count{outcome="succeeded"} 3.0' in text
    assert 'mlsharp_stage_duration_seconds_count{stage="inference"} 3.0' in text
    assert "mlsharp_queue_depth" not in text and "mlsharp_cache_entries" not in text
    assert "mlsharp_device_memory_bytes" in text
    text = httpx.get(f"{api.url}/metrics").text
    assert _value(text, "mlsharp_queue_depth") == 0
    assert _value(text, "mlsharp_jobs_running") == 0
