"""The SQLite job store (the embedded queue) and the auth/rate-limit building blocks."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from mlsharp.errors import Forbidden, RateLimited, Unauthorized
from mlsharp.service.auth import ApiKeys, TokenBucketLimiter
from mlsharp.service.jobs import JobRecord, JobStatus, SQLiteJobStore


@pytest.fixture()
def store(tmp_path):
    s = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def _job(job_id: str, created: float, **kw) -> JobRecord:
    return JobRecord(id=job_id, created_at=created, **kw)


def test_round_trip_and_versioning(store):
    job = store.add(_job("a", 1.0, formats=("ply",), focal_mm=28.0, owner="k"))
    assert store.get("a") == job
    updated = store.update("a", stage="decode", timings={"decode": 0.5})
    assert updated.version == job.version + 1
    assert store.get("a").timings == {"decode": 0.5}
    with pytest.raises(KeyError):
        store.update("missing", stage="x")


def test_claim_is_fifo_and_exclusive(store):
    """Oldest first; concurrent claimers never get the same job."""
    for i in range(20):
        store.add(_job(f"j{i:02d}", float(i)))
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        while (job := store.claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"j{i:02d}" for i in range(20)]
    assert len(set(claimed)) == 20
    assert store.counts()["running"] == 20
    assert store.get("j00").attempts == 1


def test_requeue_and_cancel(store):
    store.add(_job("r", 1.0))
    store.add(_job("q", 2.0))
    assert store.claim_next().id == "r"
    assert store.requeue_running() == 1
    assert store.get("r").status is JobStatus.QUEUED
    canceled = store.cancel_queued("q")
    assert canceled.status is JobStatus.CANCELED and canceled.finished_at is not None
    assert store.cancel_queued("q") is None  # no longer queued


def test_idempotency_key_unique_per_owner(store):
    store.add(_job("a", 1.0, owner="k1", idempotency_key="same"))
    store.add(_job("b", 1.0, owner="k2", idempotency_key="same"))  # another owner: fine
    with pytest.raises(sqlite3.IntegrityError):
        store.add(_job("c", 1.0, owner="k1", idempotency_key="same"))
    assert store.find_idempotent("k1", "same").id == "a"
    assert store.find_idempotent(None, "same") is None


def test_list_paging_and_filters(store):
    for i in range(5):
        store.add(_job(f"l{i}", float(i), owner="o" if i % 2 else None))
    page, total = store.list(limit=2)
    assert total == 5 and [j.id for j in page] == ["l4", "l3"]
    page, _ = store.list(limit=2, offset=4)
    assert [j.id for j in page] == ["l0"]
    mine, total = store.list(limit=10, owner="o")
    assert total == 2 and {j.id for j in mine} == {"l1", "l3"}
    _, total = store.list(limit=10, status=JobStatus.QUEUED)
    assert total == 5


def test_expired(store):
    store.add(_job("old", 1.0, status=JobStatus.SUCCEEDED, finished_at=10.0))
    store.add(_job("new", 1.0, status=JobStatus.FAILED, finished_at=100.0))
    store.add(_job("live", 1.0))
    assert store.expired(50.0) == ["old"]


def test_api_keys():
    keys = ApiKeys(["k1", "k2"])
    assert keys.required
    with pytest.raises(Unauthorized):
        keys.identify({})
    with pytest.raises(Forbidden):
        keys.identify({"authorization": "Bearer nope"})
    one = keys.identify({"authorization": "Bearer k1"})
    two = keys.identify({"x-api-key": "k2"})
    assert one and two and one != two
    assert "k1" not in repr(keys.__dict__)  # only digests are kept
    assert ApiKeys([]).identify({}) is None


def test_token_bucket_refills():
    now = [0.0]
    limiter = TokenBucketLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 20.0  # one token every 20 s
    limiter.check("b")  # another client has its own bucket
    now[0] = 20.0
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
