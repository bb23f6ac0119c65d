"""The Redis-backed parts, in-process against a real redis-server (no model needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlsharp.errors import RateLimited, ServiceUnavailable
from mlsharp.service.jobs import JobRecord, JobStatus


@pytest.fixture()
def client(redis_server):
    redis = redis_server.client()
    yield redis
    redis.close()


def _store(redis_server):
    from mlsharp.service.jobs.redis import RedisJobStore

    return RedisJobStore(redis_server.client(), "t")


def _webhooks(redis_server):
    from mlsharp.service.webhooks import WebhookService
    from mlsharp.service.webhooks.redis import RedisWebhookStore

    return WebhookService(RedisWebhookStore(redis_server.client(), "t"), allow_private=True)


def test_store_shared_between_instances_with_idempotency(redis_server):
    from mlsharp.service.jobs import DuplicateJob

    one, two = _store(redis_server), _store(redis_server)
    first = one.add(JobRecord(id="job_a", owner="k1", idempotency_key="abc", created_at=1.0))
    one.add(JobRecord(id="job_b", created_at=2.0))
    assert two.settled(["job_a", "job_b"]) == {"job_a", "job_b"}  # their messages are due
    assert two.get("job_a") == first
    assert two.find_idempotent("k1", "abc") == first
    with pytest.raises(DuplicateJob):
        two.add(JobRecord(id="job_c", owner="k1", idempotency_key="abc"))
    assert two.counts() == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    page, total = two.page(limit=1)
    assert total == 2 and [j.id for j in page] == ["job_b"]
    assert [j.id for j in two.page(limit=10, owner="k1")[0]] == ["job_a"]
    assert two.cancel_queued("job_b").status is JobStatus.CANCELED
    assert one.page(limit=10, status=JobStatus.CANCELED)[0][0].id == "job_b"
    assert one.expired(time.time() + 1) == ["job_b"]
    one.delete("job_a")
    assert two.get("job_a") is None and two.find_idempotent("k1", "abc") is None


def test_redelivery_is_fenced_and_completes_once(redis_server):
    """Deliveries of one job: a duplicate while its run's lease is alive is skipped (not
    an attempt); a run whose lease is gone is taken over only when asked to; the older
    run, still alive, may record the first result; one webhook delivery in all."""
    from mlsharp.service.jobs import LeaseLost
    from mlsharp.service.jobs.transitions import BUSY, ORPHAN, RUN, SKIP

    store = _store(redis_server)
    redis = redis_server.client()
    hooks = _webhooks(redis_server)
    hook = hooks.create("http://127.0.0.1:9/hook", ["job.succeeded"])
    store.add(JobRecord(id="job_x"))
    outcome, first = store.start_attempt("job_x", max_attempts=3)
    assert outcome == RUN and first.attempts == 1
    assert 0 < redis.pttl("t:lease:job_x") <= 30_000
    outcome, job = store.start_attempt("job_x", max_attempts=3)  # requeued while alive
    assert outcome == BUSY and job.attempts == 1
    redis.delete("t:lease:job_x")  # e.g. expired while Redis was down
    assert store.start_attempt("job_x", max_attempts=3)[0] == ORPHAN
    store.renew_leases({"job_x": 1})  # the run was alive: its heartbeat is back
    assert store.start_attempt("job_x", max_attempts=3)[0] == BUSY
    redis.delete("t:lease:job_x")
    outcome, second = store.start_attempt("job_x", max_attempts=3, take_over=True)
    assert outcome == RUN and second.attempts == 2

    # The older run keeps going without writing stages; it may not retry or fail the job.
    assert store.advance("job_x", 1, "inference").stage == "decode"
    assert store.advance("job_x", 2, "inference").stage == "inference"
    assert store.finish("job_x", 1, status=JobStatus.FAILED) is None
    assert store.requeue("job_x", 1, delay_seconds=1) is None
    # ... but its result is as good as the newer run's: the first result wins.
    done = store.finish("job_x", 1, status=JobStatus.SUCCEEDED, outputs={"ply": "a"})
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 2
    with pytest.raises(LeaseLost):
        store.advance("job_x", 2, "write")
    assert store.finish("job_x", 2, status=JobStatus.SUCCEEDED) is None
    assert store.start_attempt("job_x", max_attempts=3)[0] == SKIP
    assert hooks.relay() == 1  # the outbox held the one event of the job's end
    assert len(hooks.deliveries(hook.id)) == 1
    assert store.get("job_x").outputs == {"ply": "a"}
    assert not redis.exists("t:lease:job_x")


def test_exhausted_job_fails_with_its_webhook_in_the_same_commit(redis_server):
    """A job whose runs all died is failed on its next delivery, the last error kept, and
    its job.failed event enters the outbox in the same transaction."""
    from mlsharp.service.jobs.transitions import EXHAUSTED

    store = _store(redis_server)
    hooks = _webhooks(redis_server)
    hook = hooks.create("http://127.0.0.1:9/hook", ["job.failed"])
    store.add(JobRecord(id="job_y", attempts=3, error={"code": "x", "message": "boom"}))

    outcome, job = store.start_attempt("job_y", max_attempts=3)
    assert outcome == EXHAUSTED and job.status is JobStatus.FAILED
    assert job.error["code"] == "too_many_attempts" and "boom" in job.error["message"]
    assert hooks.relay() == 1
    [delivery] = hooks.deliveries(hook.id)
    assert delivery.event == "job.failed" and delivery.payload["data"]["id"] == "job_y"


def test_a_job_whose_send_fails_stays_stored_for_the_reconciler(redis_server):
    """The record and its sending mark commit first; a send that fails then (Redis gone)
    is logged, not raised: the reconciler sends the job once the mark expires."""
    from mlsharp.config import Settings
    from mlsharp.service.metrics import Metrics
    from mlsharp.service.queue.dramatiq import DramatiqQueue

    store = _store(redis_server)
    settings = Settings(queue=redis_server.url, queue_namespace="t")
    queue = DramatiqQueue(settings, redis_server.client(), store, Metrics())
    job = store.add(JobRecord(id="job_s"))
    assert store.get("job_s") == job
    assert 0 < redis_server.client().pttl("t:sending:job_s") <= 30_000
    assert store.settled(["job_s"]) == {"job_s"}
    redis_server.stop()
    queue.send(job)  # Redis went away: logged


def test_reconciler_resends_lost_messages_and_fails_dead_ones(redis_server):
    """Jobs left without a queue message are sent again; one whose message was
    dead-lettered is failed with its webhook; waiting or running ones are left alone."""
    from dramatiq import Message

    from mlsharp.config import Settings
    from mlsharp.service.jobs.redis import RedisJobStore
    from mlsharp.service.queue.dramatiq import TaskBroker
    from mlsharp.service.queue.reconcile import Reconciler

    grace = 0.3
    settings = Settings(queue=redis_server.url, queue_namespace="t", queue_grace_seconds=grace)
    queue = TaskBroker(settings, redis_server.client())
    store = RedisJobStore(redis_server.client(), "t", grace_seconds=grace)
    hooks = _webhooks(redis_server)
    hook = hooks.create("http://127.0.0.1:9/hook", ["job.failed"])
    broker = queue.broker

    def submit(job_id: str) -> None:  # stored, then its message sent (as a submission)
        queue.enqueue(store.add(JobRecord(id=job_id)))

    # running, then its message acked although the job never finished: no lease either
    submit("job_acked")
    store.start_attempt("job_acked", max_attempts=3)
    [raw] = broker.do_fetch("jobs", 1)
    broker.do_ack("jobs", Message.decode(raw).options["redis_message_id"])
    redis_server.client().delete("t:lease:job_acked")
    # dead-lettered: the queue's retries ran out while the job stayed queued
    submit("job_dead")
    [raw] = broker.do_fetch("jobs", 1)
    broker.do_nack("jobs", Message.decode(raw).options["redis_message_id"])
    # stored, but the API died before sending its message
    store.add(JobRecord(id="job_lost"))
    store.mark_sending("job_lost")
    # waiting in the queue, and running with a live lease (its message fetched)
    submit("job_waiting")
    submit("job_running")
    store.start_attempt("job_running", max_attempts=3)

    reconciler = Reconciler(store, queue, grace_seconds=grace)
    # job_acked has no mark (its run started): sent at once; the others' are fresh.
    assert reconciler.sweep() == {"resent": 1, "failed": 0}
    assert reconciler.sweep() is None  # the lock: one sweep per interval in the cluster
    deadline = time.monotonic() + 10
    while store.settled(["job_dead", "job_lost"]):
        assert time.monotonic() < deadline, "the sending marks did not expire"
        time.sleep(0.05)
    redis_server.client().delete("t:reconcile:lock")
    assert reconciler.sweep() == {"resent": 1, "failed": 1}
    states = queue.message_states(grace)
    assert states["job_acked"] == states["job_lost"] == "live"
    dead = store.get("job_dead")
    assert dead.status is JobStatus.FAILED and dead.error["code"] == "queue_message_dead"
    hooks.relay()
    assert [d.event for d in hooks.deliveries(hook.id)] == ["job.failed"]
    assert store.get("job_running").status is JobStatus.RUNNING
    # A second sweep sends nothing more: the resent jobs are marked as sending.
    redis_server.client().delete("t:reconcile:lock")
    assert reconciler.sweep() == {"resent": 0, "failed": 0}


def test_rate_limit_is_shared(redis_server):
    from mlsharp.service.limits import TokenBucketLimiter
    from mlsharp.service.limits.redis import RedisBuckets

    a = TokenBucketLimiter(RedisBuckets(redis_server.client(), "t"), 3, 60.0)
    b = TokenBucketLimiter(RedisBuckets(redis_server.client(), "t"), 3, 60.0)
    a.check("alice")
    b.check("alice")
    a.check("alice")
    with pytest.raises(RateLimited) as refused:
        b.check("alice")
    assert refused.value.retry_after == 20.0  # one token per 20 s
    b.check("bob")  # buckets are per client


def test_cache_is_shared(redis_server, tmp_path: Path):
    from mlsharp.service.cache import ResultCache
    from mlsharp.service.cache.redis import RedisCacheIndex
    from mlsharp.service.files.local import LocalBlobs

    blobs = LocalBlobs(tmp_path / "shared")
    a = ResultCache(RedisCacheIndex(redis_server.client(), "t"), blobs, max_bytes=250)
    b = ResultCache(RedisCacheIndex(redis_server.client(), "t"), blobs, max_bytes=250)
    src = tmp_path / "r.ply"
    src.write_bytes(b"x" * 100)
    a.put("aa" * 32, {"ply": src})
    hit = b.get("aa" * 32, ["ply"])
    assert hit is not None and hit["ply"].read_bytes() == b"x" * 100
    assert b.get("aa" * 32, ["spz"]) is None
    a.put("bb" * 32, {"ply": src})
    b.get("aa" * 32, ["ply"])  # aa becomes the most recently used
    b.put("cc" * 32, {"ply": src})  # 300 > 250 bytes: evicts bb
    assert a.get("bb" * 32, ["ply"]) is None
    stats = a.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses) == (2, 200, 2, 2)
    assert b.clear() == 200 and a.stats().entries == 0


def test_webhooks_dispatched_once_across_instances(redis_server, webhook_receiver):
    """Three instances relay the outbox and dispatch at once: each job's event is sent
    exactly once, signed; a job updated after its end publishes nothing more."""
    from mlsharp.service.webhooks import verify

    store = _store(redis_server)
    services = [_webhooks(redis_server) for _ in range(3)]
    hook = services[0].create(webhook_receiver.url, ["job.succeeded"])
    for service in services:
        service.start()
    try:
        for i in range(15):  # finished at birth, as cache hits are: in the outbox at once
            done = JobRecord(id=f"job_{i}", status=JobStatus.SUCCEEDED, finished_at=time.time())
            store.add(done)
        store.update("job_0", status=JobStatus.SUCCEEDED)  # ended already: no second event
        assert services[2].wait_idle(20)
        time.sleep(0.5)
    finally:
        for service in services:
            service.stop()
    ids = sorted(b["data"]["id"] for b in webhook_receiver.bodies())
    assert ids == sorted(f"job_{i}" for i in range(15))
    for received in webhook_receiver.received:
        body = __import__("json").dumps(received["body"], separators=(",", ":")).encode()
        assert verify(hook.secret, received["headers"], body)
    assert {d.status for d in services[1].deliveries(hook.id)} == {"succeeded"}


def test_redis_down_is_a_503(redis_server):
    from mlsharp.service.limits import TokenBucketLimiter
    from mlsharp.service.limits.redis import RedisBuckets

    store = _store(redis_server)
    limiter = TokenBucketLimiter(RedisBuckets(redis_server.client(), "t"), 3, 60.0)
    redis_server.stop()
    for call in (lambda: store.get("job_x"), store.counts, lambda: limiter.check("a")):
        with pytest.raises(ServiceUnavailable) as error:
            call()
        assert error.value.http_status == 503 and error.value.retry_after > 0


def test_embedded_mode_imports_no_distributed_dependency(tmp_path: Path):
    code = (
        "import sys\n"
        "from mlsharp.config import Settings\n"
        "from mlsharp.service.app import create_app\n"
        "from mlsharp.service.backends import build_state\n"
        f"state = build_state(Settings(data_dir={str(tmp_path)!r}))\n"
        "create_app(state.settings)\n"
        "state.close()\n"
        "bad = [m for m in ('redis', 'dramatiq', 'boto3') if m in sys.modules]\n"
        "print('imported:', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "imported: []" in out.stdout, out.stdout + out.stderr


def test_worker_needs_a_queue(run_cli):
    result = run_cli("worker", "--preset", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mlsharp: error: mlsharp worker needs a queue: --queue redis://HOST:PORT/DB or "
        "$MLSHARP_QUEUE"
    )
    result = run_cli("worker", "--queue", "http://nope")
    assert result.returncode == 2
    assert "the queue must be a Redis URL" in result.stderr


def test_settings_mask_the_queue_password():
    from mlsharp.config import Settings

    masked = Settings(queue="redis://:hunter2@db:6379/0", s3_secret_access_key="s").masked()
    assert masked["queue"] == "redis://:********@db:6379/0"
    assert masked["s3_secret_access_key"] == "********"
