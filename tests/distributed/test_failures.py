"""Failures in the scale-out mode: poison inputs fail at once, other errors are retried a
bounded number of times with the last error kept, a run past the time limit fails, lost
queue messages are sent again and duplicate ones complete once."""

from __future__ import annotations

import collections
import time

import pytest

from tests.distributed.conftest import (
    job_record,
    submit,
    wait_jobs,
    wait_log,
    wait_webhooks_settled,
)

pytestmark = pytest.mark.slow


def _attempts(redis_server, job_id: str) -> int:
    return job_record(redis_server.url, job_id).attempts


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
    assert wait_webhooks_settled(redis_server.url) == 2
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


def test_lost_and_duplicate_messages_complete_once(cluster, redis_server, webhook_receiver):
    """Queue messages lost after their jobs were stored (the queue flushed, as if the API
    died before sending or Redis lost them) are sent again by the reconciler after the
    grace period; extra duplicates of a message change nothing: each job runs once, with
    one result and one webhook."""
    import httpx
    import redis

    from mlsharp.config import Settings
    from mlsharp.service.queue.dramatiq import TaskBroker

    cluster.env.update(MLSHARP_QUEUE_GRACE_SECONDS="1")
    api = cluster.api()
    httpx.post(
        f"{api.url}/v1/webhooks", json={"url": webhook_receiver.url, "events": ["job.succeeded"]}
    ).raise_for_status()
    lost = [submit(api.url, (20 * i, 9, 9)) for i in range(3)]
    doubled = submit(api.url, (9, 9, 250))
    queue = TaskBroker(Settings(queue=redis_server.url), redis.Redis.from_url(redis_server.url))
    queue.broker.flush("jobs")  # every message is gone; the records stay queued
    for _ in range(3):
        queue.actor.send(doubled)  # and one job gets three
    started = time.monotonic()
    workers = [cluster.worker(), cluster.worker()]
    jobs = wait_jobs([api.url], [*lost, doubled], timeout=90)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
    print(f"lost messages recovered within {time.monotonic() - started:.1f}s")
    deadline = time.monotonic() + 30
    while True:  # the duplicates may still be in the queue when the job has finished
        logs = "".join(w.log() for w in workers)
        if logs.count(f"job {doubled}: delivery skipped") == 2:
            break
        assert time.monotonic() < deadline, logs
        time.sleep(0.1)
    assert logs.count("had no queue message: sent again") == 3  # only the lost ones
    assert logs.count(f"job {doubled}: run 1 ") == 1 and f"job {doubled}: run 2" not in logs
    assert {job_id: _attempts(redis_server, job_id) for job_id in jobs} == dict.fromkeys(jobs, 1)
    assert wait_webhooks_settled(redis_server.url) == 4
    counted = collections.Counter(b["data"]["id"] for b in webhook_receiver.bodies())
    assert counted == dict.fromkeys(jobs, 1)
