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


def _store(redis_server, queued=None):
    from mlsharp.service.distributed.job_store import RedisJobStore

    return RedisJobStore(redis_server.client(), "t", on_queued=queued)


def test_store_shared_between_instances_with_idempotency(redis_server):
    from mlsharp.service.distributed.job_store import DuplicateJob

    enqueued: list[str] = []
    one, two = _store(redis_server, lambda j: enqueued.append(j.id)), _store(redis_server)
    first = one.add(JobRecord(id="job_a", owner="k1", idempotency_key="abc", created_at=1.0))
    one.add(JobRecord(id="job_b", created_at=2.0))
    assert enqueued == ["job_a", "job_b"]
    assert two.get("job_a") == first
    assert two.find_idempotent("k1", "abc") == first
    with pytest.raises(DuplicateJob):
        two.add(JobRecord(id="job_c", owner="k1", idempotency_key="abc"))
    assert two.counts() == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    page, total = two.list(limit=1)
    assert total == 2 and [j.id for j in page] == ["job_b"]
    assert [j.id for j in two.list(limit=10, owner="k1")[0]] == ["job_a"]
    assert two.cancel_queued("job_b").status is JobStatus.CANCELED
    assert one.list(limit=10, status=JobStatus.CANCELED)[0][0].id == "job_b"
    assert one.expired(time.time() + 1) == ["job_b"]
    one.delete("job_a")
    assert two.get("job_a") is None and two.find_idempotent("k1", "abc") is None


def test_redelivery_is_fenced_and_completes_once(redis_server):
    """Two runs of one job (the first looked dead): only the newer may advance or finish,
    and the final transition creates exactly one webhook delivery."""
    from mlsharp.service.distributed.job_store import EXHAUSTED, RUN, SKIP, LeaseLost
    from mlsharp.service.distributed.webhooks import RedisWebhookService

    store = _store(redis_server)
    hooks = RedisWebhookService(redis_server.client(), "t", allow_private=True)
    hook = hooks.create("http://127.0.0.1:9/hook", ["job.succeeded"])
    store.add(JobRecord(id="job_x"))
    outcome, first = store.start_attempt("job_x", max_attempts=3)
    assert outcome == RUN and first.attempts == 1
    outcome, second = store.start_attempt("job_x", max_attempts=3)  # redelivered
    assert outcome == RUN and second.attempts == 2

    def deliveries(pipe, final):
        hooks.stage(pipe, "job.succeeded", {"id": final.id}, None, f"{final.id}:done")

    with pytest.raises(LeaseLost):
        store.advance("job_x", 1, "inference")
    assert store.finish("job_x", 1, deliveries, status=JobStatus.SUCCEEDED) is None
    assert store.advance("job_x", 2, "inference").stage == "inference"
    done = store.finish("job_x", 2, deliveries, status=JobStatus.SUCCEEDED, outputs={"ply": "a"})
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert store.finish("job_x", 2, deliveries, status=JobStatus.FAILED) is None
    assert store.start_attempt("job_x", max_attempts=3)[0] == SKIP
    assert len(hooks.deliveries(hook.id)) == 1
    assert store.get("job_x").outputs == {"ply": "a"}
    # A job whose runs all died is failed on its next delivery, the last error kept.
    store.add(JobRecord(id="job_y", attempts=3, error={"code": "x", "message": "boom"}))
    outcome, job = store.start_attempt("job_y", max_attempts=3)
    assert outcome == EXHAUSTED and job.status is JobStatus.FAILED
    assert job.error["code"] == "too_many_attempts" and "boom" in job.error["message"]


def test_rate_limit_is_shared(redis_server):
    from mlsharp.service.distributed.limiter import RedisTokenBucket

    a = RedisTokenBucket(redis_server.client(), "t", 3, 60.0)
    b = RedisTokenBucket(redis_server.client(), "t", 3, 60.0)
    a.check("alice")
    b.check("alice")
    a.check("alice")
    with pytest.raises(RateLimited) as refused:
        b.check("alice")
    assert refused.value.retry_after == 20.0  # one token per 20 s
    b.check("bob")  # buckets are per client


def test_cache_is_shared(redis_server, tmp_path: Path):
    from mlsharp.service.distributed.blobs import LocalBlobs
    from mlsharp.service.distributed.cache import RedisResultCache

    blobs = LocalBlobs(tmp_path / "shared")
    a = RedisResultCache(redis_server.client(), "t", blobs, max_bytes=250)
    b = RedisResultCache(redis_server.client(), "t", blobs, max_bytes=250)
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
    from mlsharp.service.distributed.webhooks import RedisWebhookService
    from mlsharp.service.webhooks import verify

    services = [
        RedisWebhookService(redis_server.client(), "t", allow_private=True) for _ in range(3)
    ]
    hook = services[0].create(webhook_receiver.url, ["job.succeeded"])
    for service in services:
        service.start()
    try:
        for i in range(15):
            services[i % 3].publish("job.succeeded", {"id": f"job_{i}"}, dedupe_key=f"{i}")
        services[1].publish("job.succeeded", {"id": "job_0"}, dedupe_key="0")  # a duplicate
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
    from mlsharp.service.distributed.limiter import RedisTokenBucket

    store = _store(redis_server)
    limiter = RedisTokenBucket(redis_server.client(), "t", 3, 60.0)
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
        "from mlsharp.service.state import ServiceState\n"
        f"state = ServiceState.build(Settings(data_dir={str(tmp_path)!r}))\n"
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
