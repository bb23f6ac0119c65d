"""Redis away at start or mid-run, API instances restarted: clear 503s with Retry-After,
workers wait with backoff instead of crashing, a run that outlives an outage keeps its
result and its attempt, event streams end cleanly, everything recovers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.distributed.conftest import (
    RedisServer,
    free_port,
    job_record,
    jpeg_bytes,
    requeue_all_in_flight,
    running_and_other,
    submit,
    wait_jobs,
    wait_log,
    wait_webhooks_settled,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def persistent_redis(tmp_path, cluster) -> Iterator[RedisServer]:
    """A redis-server whose data survives stop/start (append-only file), used by the
    cluster's processes instead of the default one."""
    redis = RedisServer(free_port(), tmp_path / "aof", persistent=True)
    redis.workdir.mkdir()
    redis.start()
    cluster.queue_url = redis.url
    yield redis
    redis.stop()


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
    wait_log(worker, "retry 3 in 2.0s", timeout=60)  # backing off, 0.5 s doubling
    assert worker.process.poll() is None, worker.log()  # waiting, not crash-looping
    redis_server.start()
    wait_log(worker, "consuming jobs from the queue", timeout=60)
    job_id = submit(api.url, (9, 8, 7))
    assert wait_jobs([api.url], [job_id])[job_id]["status"] == "succeeded"


def test_redis_down_during_a_run(cluster, persistent_redis):
    """Redis dies while a job runs: the API answers 503, the worker keeps the result and
    records it when Redis is back; new jobs run again."""
    redis = persistent_redis
    api = cluster.api()
    worker = cluster.worker("--debug-job-delay", "3")
    job_id = submit(api.url, (1, 1, 1))
    wait_log(worker, f"job {job_id}: run 1 ")
    redis.stop()
    _assert_503(_post(api.url))
    _assert_503(httpx.get(f"{api.url}/v1/jobs/{job_id}"))
    wait_log(worker, "job store unavailable while")  # the run needs Redis, waits for it
    assert worker.process.poll() is None, worker.log()
    redis.start()
    job = wait_jobs([api.url], [job_id], timeout=90)[job_id]
    assert job["status"] == "succeeded", job
    assert "job store unavailable while" in worker.log()
    second = submit(api.url, (2, 2, 2))
    assert wait_jobs([api.url], [second], timeout=60)[second]["status"] == "succeeded"
    assert worker.process.poll() is None


def test_outage_longer_than_the_heartbeat_timeout_keeps_the_run(
    cluster, persistent_redis, webhook_receiver
):
    """Two workers; Redis is down longer than the heartbeat timeout while one runs a job.
    When it is back the broker requeues that job's message (as the first worker back,
    or one whose clock runs ahead, does): the other worker sees the run's lease renewed
    and skips it. The job keeps its first run's result: one attempt, one webhook."""
    redis = persistent_redis
    api = cluster.api()
    httpx.post(
        f"{api.url}/v1/webhooks",
        json={"url": webhook_receiver.url, "events": ["job.succeeded"]},
    ).raise_for_status()
    # The run outlasts the outage and the other worker's decision with a margin.
    workers = [cluster.worker("--debug-job-delay", "12") for _ in range(2)]
    job_id = submit(api.url, (4, 5, 6))
    busy, other = running_and_other(workers, job_id, timeout=30)
    redis.stop()
    time.sleep(3.0)  # the outage itself: longer than the 2 s heartbeat timeout
    redis.start()
    requeue_all_in_flight(redis.url)
    wait_log(other, f"job {job_id}: delivery skipped (a live run holds it)", timeout=30)
    job = wait_jobs([api.url], [job_id], timeout=60)[job_id]
    assert job["status"] == "succeeded", job
    assert f"job {job_id} succeeded" in busy.log()
    assert f"job {job_id}: run 2" not in other.log()
    assert job_record(redis.url, job_id).attempts == 1
    assert wait_webhooks_settled(redis.url) == 1
    assert [b["data"]["id"] for b in webhook_receiver.bodies()] == [job_id]


def test_event_stream_ends_with_an_error_event_when_redis_goes(cluster, redis_server):
    """An SSE client following a job gets an ``error`` event in the error schema and a
    clean end of the stream when Redis goes away, not an aborted connection."""
    import json

    api = cluster.api()
    job_id = submit(api.url, (7, 7, 7))  # no worker: it stays queued
    events: list[tuple[str, str]] = []
    with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", timeout=30) as response:
        assert response.status_code == 200
        kind = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, line[len("data: ") :]))
                kind = "message"
                if len(events) == 1:
                    redis_server.stop()
    assert [kind for kind, _ in events] == ["message", "error"]
    assert json.loads(events[0][1])["status"] == "queued"
    error = json.loads(events[1][1])
    assert error["error"] == "service_unavailable" and "Redis" in error["message"]
    assert error["status_code"] == 503 and error["request_id"]


def test_api_instances_restart_mid_run(cluster):
    """Both API instances are restarted (one killed, one stopped) while jobs run; a client
    keeps polling whichever answers, during the restarts too, and gets every result."""
    ports = [free_port(), free_port()]
    apis = [cluster.api(port=port) for port in ports]
    urls = [api.url for api in apis]
    cluster.worker("--debug-job-delay", "0.75")
    ids = [submit(urls[i % 2], (3 * i, 40, 90)) for i in range(8)]
    answers: list[tuple[str, str, str]] = []  # (api url, job id, status) while polling
    stop = threading.Event()

    def poll() -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            url, job_id = urls[turn % 2], ids[turn % len(ids)]
            try:
                response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5)
            except httpx.HTTPError:
                continue  # that instance is restarting: the next turn asks the other
            if response.status_code == 200:
                answers.append((url, job_id, response.json()["status"]))
            time.sleep(0.02)

    def running_now() -> int:
        return sum(status == "running" for _, _, status in answers[-len(ids) :])

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while not running_now():
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.05)
        apis[0].stop(signal.SIGKILL)
        seen = len(answers)
        apis[0] = cluster.api(port=ports[0])
        _answered_while_away(answers[seen:], urls[1])
        assert apis[1].stop() in (0, -signal.SIGTERM)  # graceful (uvicorn re-raises SIGTERM)
        assert "Application shutdown complete" in apis[1].log()
        seen = len(answers)
        apis[1] = cluster.api(port=ports[1])
        _answered_while_away(answers[seen:], urls[0])
        jobs = wait_jobs(urls, ids, timeout=120)
    finally:
        stop.set()
        poller.join(10)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    for job_id in ids:
        result = httpx.get(f"{apis[1].url}/v1/jobs/{job_id}/result?format=ply", timeout=30)
        assert result.status_code == 200 and result.content.startswith(b"ply\n")


def _answered_while_away(answers: list[tuple[str, str, str]], other: str) -> None:
    """While one instance restarted, the other answered, and jobs were still unfinished."""
    assert other in {url for url, _, _ in answers}, "no answer during the restart"
    unfinished = [job_id for _, job_id, status in answers if status in ("queued", "running")]
    assert unfinished, "every job had finished before the restart"
