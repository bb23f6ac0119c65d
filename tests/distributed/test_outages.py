"""Redis away at start or mid-run, API instances restarted: clear 503s with Retry-After,
workers wait with backoff instead of crashing, everything recovers."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.distributed.conftest import free_port, jpeg_bytes, submit, wait_jobs, wait_log

pytestmark = pytest.mark.slow


def _post(url: str) -> httpx.Response:
    files = {"file": ("x.jpg", jpeg_bytes(color=(5, 6, 7)), "image/jpeg")}
    return httpx.post(f"{url}/v1/jobs", files=files, timeout=30)


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["error"] == "service_unavailable"
    assert "Redis" in body["message"] and body["request_id"]


def test_redis_down_at_start_then_up(cluster, redis_server):
    """API and worker start while Redis is down: 503s and a waiting worker, then both
    recover by themselves when Redis comes up."""
    redis_server.stop()
    api = cluster.api()
    assert httpx.get(f"{api.url}/v1/health").status_code == 200
    _assert_503(_post(api.url))
    _assert_503(httpx.get(f"{api.url}/v1/jobs/job_x"))
    worker = cluster.worker(wait=False)
    wait_log(worker, "unavailable", timeout=60)
    time.sleep(2.0)
    assert worker.process.poll() is None, worker.log()  # waiting, not crash-looping
    assert "retry 2 in 1.0s" in worker.log() or "retry 3 in 2.0s" in worker.log()
    redis_server.start()
    wait_log(worker, "consuming jobs from the queue", timeout=60)
    job_id = submit(api.url, (9, 8, 7))
    assert wait_jobs([api.url], [job_id])[job_id]["status"] == "succeeded"


def test_redis_down_during_a_run(cluster, tmp_path):
    """Redis dies while a job runs: the API answers 503, the worker keeps the result and
    records it when Redis is back; new jobs run again."""
    from tests.distributed.conftest import RedisServer

    redis = RedisServer(free_port(), tmp_path / "aof", persistent=True)
    redis.workdir.mkdir()
    redis.start()
    cluster.queue_url = redis.url
    try:
        api = cluster.api()
        worker = cluster.worker("--debug-job-delay", "3")
        job_id = submit(api.url, (1, 1, 1))
        wait_log(worker, f"job {job_id}: run 1 ")
        redis.stop()
        _assert_503(_post(api.url))
        _assert_503(httpx.get(f"{api.url}/v1/jobs/{job_id}"))
        time.sleep(4.0)  # the run ends while Redis is down
        assert worker.process.poll() is None, worker.log()
        redis.start()
        job = wait_jobs([api.url], [job_id], timeout=90)[job_id]
        assert job["status"] == "succeeded", job
        assert "redis unavailable while" in worker.log() or "lost the connection" in worker.log()
        second = submit(api.url, (2, 2, 2))
        assert wait_jobs([api.url], [second], timeout=60)[second]["status"] == "succeeded"
        assert worker.process.poll() is None
    finally:
        redis.stop()


def test_api_instances_restart_mid_run(cluster):
    """Both API instances are restarted (one killed, one stopped) while jobs run; clients
    keep polling whichever answers and get every result."""
    ports = [free_port(), free_port()]
    apis = [cluster.api(port=port) for port in ports]
    cluster.worker("--debug-job-delay", "0.3")
    ids = [submit(apis[i % 2].url, (3 * i, 40, 90)) for i in range(8)]
    apis[0].stop(signal.SIGKILL)
    apis[0] = cluster.api(port=ports[0])
    assert apis[1].stop() in (0, -signal.SIGTERM)  # graceful (uvicorn re-raises SIGTERM)
    assert "Application shutdown complete" in apis[1].log()
    apis[1] = cluster.api(port=ports[1])
    jobs = wait_jobs([a.url for a in apis], ids, timeout=120)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    for job_id in ids:
        result = httpx.get(f"{apis[1].url}/v1/jobs/{job_id}/result?format=ply", timeout=30)
        assert result.status_code == 200 and result.content.startswith(b"ply\n")
