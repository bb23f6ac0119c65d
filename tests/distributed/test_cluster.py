"""Several API processes and workers on one Redis: every job runs once, results and
webhooks are shared, a killed worker's job runs elsewhere, a stopping worker finishes or
hands back its job."""

from __future__ import annotations

import collections
import signal
import time

import httpx
import pytest

from tests.distributed.conftest import (
    job_record,
    running_and_other,
    submit,
    wait_jobs,
    wait_log,
    wait_webhooks_settled,
)

pytestmark = pytest.mark.slow


def test_two_apis_two_workers_twenty_jobs(cluster, webhook_receiver):
    """20 jobs round-robin over 2 APIs, 2 workers: all succeed, results downloadable from
    either API, exactly one webhook per job (registered on the first API only)."""
    apis = [cluster.api(), cluster.api()]
    hook = httpx.post(
        f"{apis[0].url}/v1/webhooks",
        json={"url": webhook_receiver.url, "events": ["job.succeeded", "job.failed"]},
    )
    assert hook.status_code == 201, hook.text
    workers = [cluster.worker(), cluster.worker()]
    ids = [submit(apis[i % 2].url, (10 * i, 200 - 5 * i, 77)) for i in range(20)]
    assert len(set(ids)) == 20
    jobs = wait_jobs([a.url for a in apis], ids)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
    for job_id in ids:
        for api in apis:
            result = httpx.get(f"{api.url}/v1/jobs/{job_id}/result?format=ply", timeout=30)
            assert result.status_code == 200, result.text
            assert result.content.startswith(b"ply\n")
    # Both workers took part (prefetch of one: an idle worker gets the next job).
    ran = [w.log().count(" succeeded in ") for w in workers]
    assert sum(ran) == 20 and min(ran) > 0, ran
    assert wait_webhooks_settled(cluster.queue_url) == 20
    per_job = collections.Counter(b["data"]["id"] for b in webhook_receiver.bodies())
    assert per_job == dict.fromkeys(ids, 1), per_job
    assert {b["type"] for b in webhook_receiver.bodies()} == {"job.succeeded"}
    # The deliveries are visible from the other API as well.
    hook_id = hook.json()["id"]
    deliveries = httpx.get(f"{apis[1].url}/v1/webhooks/{hook_id}/deliveries?limit=50").json()
    assert len(deliveries) == 20 and {d["status"] for d in deliveries} == {"succeeded"}


def test_killed_worker_job_completes_on_the_other(cluster, webhook_receiver, moto_s3):
    """kill -9 the worker running a job: after the heartbeat timeout the job is redelivered
    to the other worker and completes once (one result, one webhook, run 2 of 3). Files
    live in S3: the second worker fetches the input from the bucket, not the first's disk."""
    cluster.env.update(moto_s3.env(), MLSHARP_S3_PREFIX="killed/")
    api = cluster.api()
    httpx.post(
        f"{api.url}/v1/webhooks", json={"url": webhook_receiver.url, "events": ["job.succeeded"]}
    ).raise_for_status()
    # Both workers sleep 3 s before each run: a window to kill the one running it.
    workers = [cluster.worker("--debug-job-delay", "3") for _ in range(2)]
    job_id = submit(api.url, (1, 2, 3))
    busy, other = running_and_other(workers, job_id, timeout=30)
    busy.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_log(other, f"job {job_id}: run 2 of at most 3", timeout=60)
    redelivered_after = time.monotonic() - killed_at
    job = wait_jobs([api.url], [job_id], timeout=60)[job_id]
    assert job["status"] == "succeeded"
    assert f"job {job_id} succeeded" in other.log()
    result = httpx.get(f"{api.url}/v1/jobs/{job_id}/result?format=ply", timeout=30)
    assert result.status_code == 200 and result.content.startswith(b"ply\n")
    listed = moto_s3.client().list_objects_v2(Bucket=moto_s3.bucket, Prefix="killed/jobs/")
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        f"killed/jobs/{job_id}/input.jpg",
        f"killed/jobs/{job_id}/out/p1-2.ply",
        f"killed/jobs/{job_id}/out/p1-2.preview.png",
    ]
    assert wait_webhooks_settled(cluster.queue_url) == 1
    assert [b["data"]["id"] for b in webhook_receiver.bodies()] == [job_id]
    assert httpx.get(f"{api.url}/v1/stats").json()["jobs"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "canceled": 0,
    }
    # Heartbeat timeout 2 s (see Cluster._env) plus one beat: well under 10 s.
    assert redelivered_after < 10, redelivered_after
    print(f"redelivered {redelivered_after:.2f}s after kill -9")


def test_sigterm_drains_the_job_in_hand(cluster):
    """SIGTERM while a job runs: the worker finishes it, then exits 0; the next queued
    job stays queued for another worker. A job that outlasts --drain-seconds is handed
    back (queued again, the attempt not counted) and completes on the next worker."""
    api = cluster.api()
    worker = cluster.worker("--debug-job-delay", "2")
    first = submit(api.url, (100, 0, 0))
    wait_log(worker, f"job {first}: run 1 ")
    second = submit(api.url, (0, 100, 0))
    assert worker.stop(signal.SIGTERM, timeout=60) == 0
    log = worker.log()
    assert "SIGTERM received: draining" in log and "worker stopped" in log
    assert log.index(f"job {first} succeeded") < log.index("worker stopped")
    assert httpx.get(f"{api.url}/v1/jobs/{first}").json()["status"] == "succeeded"
    assert httpx.get(f"{api.url}/v1/jobs/{second}").json()["status"] == "queued"
    slow = cluster.worker("--debug-job-delay", "60", "--drain-seconds", "0.5")
    wait_log(slow, f"job {second}: run 1 ")
    stopped_at = time.monotonic()
    assert slow.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - stopped_at < 15  # not the 60 s the job would take
    assert f"job {second}: the drain time ran out; handed back to the queue" in slow.log()
    handed_back = job_record(cluster.queue_url, second)
    assert (handed_back.status.value, handed_back.attempts) == ("queued", 0)
    cluster.worker()  # the next worker takes it at once (its message was sent again)
    assert wait_jobs([api.url], [second])[second]["status"] == "succeeded"
    assert job_record(cluster.queue_url, second).attempts == 1
