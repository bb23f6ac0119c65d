"""Failures in the scale-out mode: poison inputs fail at once, other errors are retried a
bounded number of times with the last error kept, a run past the time limit fails."""

from __future__ import annotations

import collections
import time

import pytest

from tests.distributed.conftest import submit, wait_jobs, wait_log

pytestmark = pytest.mark.slow


def _attempts(redis_server, job_id: str) -> int:
    from mlsharp.service.distributed.job_store import RedisJobStore

    store = RedisJobStore(redis_server.client(), "mlsharp")
    try:
        job = store.get(job_id)
        assert job is not None
        return job.attempts
    finally:
        store.close()


def test_poison_fails_at_once_and_errors_retry_bounded(cluster, redis_server, webhook_receiver):
    import httpx

    cluster.env.update(MLSHARP_JOB_MAX_ATTEMPTS="2", MLSHARP_JOB_RETRY_BACKOFF_SECONDS="0.2")
    api = cluster.api()
    httpx.post(
        f"{api.url}/v1/webhooks", json={"url": webhook_receiver.url, "events": ["job.failed"]}
    ).raise_for_status()
    poison = submit(api.url, (1, 1, 1))
    broken = submit(api.url, (2, 2, 2))
    jobs_dir = cluster.data_dir / "jobs"
    # The stored upload of `poison` gets corrupted: decoding fails in the worker.
    (jobs_dir / poison / "input.jpg").write_bytes(b"\xff\xd8 not a jpeg any more")
    # `broken` cannot write its result (a folder sits where the file goes): an OSError.
    (jobs_dir / broken / "out" / "p2-2.ply").mkdir(parents=True)
    worker = cluster.worker()
    jobs = wait_jobs([api.url], [poison, broken], timeout=60)
    assert jobs[poison]["status"] == "failed"
    assert jobs[poison]["error"]["code"] == "invalid_image"
    assert _attempts(redis_server, poison) == 1  # no retry for a poison input
    assert jobs[broken]["status"] == "failed"
    assert jobs[broken]["error"] == {
        "code": "internal_error",
        "message": "run 2 failed (IsADirectoryError)",
    }
    assert _attempts(redis_server, broken) == 2
    assert f"job {broken}: queued again" in worker.log()
    deadline = time.monotonic() + 20
    while len(webhook_receiver.bodies()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    counted = collections.Counter(b["data"]["id"] for b in webhook_receiver.bodies())
    assert counted == {poison: 1, broken: 1}


def test_time_limit_fails_the_job(cluster, redis_server):
    cluster.env.update(MLSHARP_JOB_TIME_LIMIT_SECONDS="1")
    api = cluster.api()
    worker = cluster.worker("--debug-job-delay", "5")
    job_id = submit(api.url, (3, 3, 3))
    started = time.monotonic()
    job = wait_jobs([api.url], [job_id], timeout=60)[job_id]
    assert job["status"] == "failed"
    assert job["error"] == {"code": "job_timeout", "message": "the job ran longer than 1s"}
    assert time.monotonic() - started < 5
    assert _attempts(redis_server, job_id) == 1
    wait_log(worker, f"job {job_id} failed")
