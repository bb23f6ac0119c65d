"""The job stores, the same tests over SQLite (embedded) and Redis (scale-out).

Records, idempotency, paging, the queue limit, the fenced transitions of runs, the outbox
entry of a job's end, damaged records; and what only the embedded store does (it is the
embedded queue: claims, delays of retries, requeue at start).
"""

from __future__ import annotations

import threading
import time

import pytest

from mlsharp.errors import QueueFull
from mlsharp.service.jobs import DuplicateJob, JobRecord, JobStatus, LeaseLost


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


def test_claim_is_fifo_and_exclusive(sqlite_store):
    store = sqlite_store
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


def test_requeue_and_cancel(sqlite_store):
    store = sqlite_store
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
    with pytest.raises(DuplicateJob):
        store.add(_job("c", 1.0, owner="k1", idempotency_key="same"))
    assert store.find_idempotent("k1", "same").id == "a"
    assert store.find_idempotent(None, "same") is None


def test_page_paging_and_filters(store):
    for i in range(5):
        store.add(_job(f"l{i}", float(i), owner="o" if i % 2 else None))
    page, total = store.page(limit=2)
    assert total == 5 and [j.id for j in page] == ["l4", "l3"]
    page, _ = store.page(limit=2, offset=4)
    assert [j.id for j in page] == ["l0"]
    mine, total = store.page(limit=10, owner="o")
    assert total == 2 and {j.id for j in mine} == {"l1", "l3"}
    _, total = store.page(limit=10, status=JobStatus.QUEUED)
    assert total == 5


def test_expired(store):
    store.add(_job("old", 1.0, status=JobStatus.SUCCEEDED, finished_at=10.0))
    store.add(_job("new", 1.0, status=JobStatus.FAILED, finished_at=100.0))
    store.add(_job("live", 1.0))
    assert store.expired(50.0) == ["old"]


def _start_run(store, job_id: str) -> JobRecord:
    """Start a run of the (only) queued job ``job_id``, as each backend's queue does."""
    if hasattr(store, "claim_next"):  # the embedded queue claims from the store
        job = store.claim_next()
    else:
        _, job = store.start_attempt(job_id, max_attempts=5, take_over=True)
        store.client.delete(store.lease_key(job_id))  # as if that run died
    assert job is not None and job.id == job_id
    return job


def test_runs_are_fenced_and_the_first_result_wins(store):
    store.add(_job("x", 1.0))
    first = _start_run(store, "x")
    assert store.requeue("x", first.attempts + 1) is None  # not this run's token
    assert store.requeue("x", first.attempts).status is JobStatus.QUEUED  # gave it back
    second = _start_run(store, "x")
    assert second.attempts == first.attempts + 1
    # The older run keeps going without writing stages; it may not retry or fail the job.
    assert store.advance("x", first.attempts, "inference").stage == "decode"
    assert store.advance("x", second.attempts, "inference").stage == "inference"
    assert store.finish("x", first.attempts, status=JobStatus.FAILED) is None
    assert store.requeue("x", first.attempts) is None
    # ... but its result is as good as the newer run's: the first result wins.
    done = store.finish("x", first.attempts, status=JobStatus.SUCCEEDED, outputs={"ply": "a"})
    assert done.status is JobStatus.SUCCEEDED and done.attempts == second.attempts
    with pytest.raises(LeaseLost):
        store.advance("x", second.attempts, "write")
    assert store.finish("x", second.attempts, status=JobStatus.SUCCEEDED) is None
    assert store.get("x").outputs == {"ply": "a"}
    with pytest.raises(LeaseLost):
        store.advance("gone", 1, "write")
    assert store.finish("gone", 1, status=JobStatus.SUCCEEDED) is None


def test_a_job_end_enters_the_outbox_with_it(store, webhooks_on):
    """Succeeded and failed jobs publish once, in the transaction that ends them (also a
    job finished at birth, a cache hit); a canceled one publishes nothing."""
    hooks = webhooks_on(store)
    hook = hooks.create("http://127.0.0.1:9/hook", ["job.succeeded", "job.failed"])
    store.add(_job("ok", 1.0))
    store.add(_job("bad", 2.0))
    store.add(_job("cached", 3.0, status=JobStatus.SUCCEEDED, finished_at=3.0, cached=True))
    store.add(_job("gone", 4.0))
    assert store.cancel_queued("gone").status is JobStatus.CANCELED
    for job_id, status in (("ok", JobStatus.SUCCEEDED), ("bad", JobStatus.FAILED)):
        run = _start_run(store, job_id)
        assert store.finish(job_id, run.attempts, status=status, finished_at=time.time())
    store.update("ok", status=JobStatus.SUCCEEDED)  # ended already: no second event
    assert hooks.pending_count() == 3  # nothing is sent before the outbox is relayed
    assert hooks.relay() == 3
    assert hooks.relay() == 0
    sent = {d.payload["data"]["id"]: d.event for d in hooks.deliveries(hook.id)}
    assert sent == {"ok": "job.succeeded", "bad": "job.failed", "cached": "job.succeeded"}


def test_the_queue_limit_holds_under_concurrent_adds(store, second_store):
    """Eight threads on two connections add 40 jobs against a limit of 5: 5 are stored;
    a batch that does not fit is stored not at all."""
    stores = [store, second_store()]
    stored, refused = [], []
    lock = threading.Lock()

    def add(index: int) -> None:
        for n in range(5):
            job = _job(f"t{index}-{n}", float(n))
            try:
                stores[index % 2].add(job, max_queued=5)
            except QueueFull:
                with lock:
                    refused.append(job.id)
            else:
                with lock:
                    stored.append(job.id)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) == 5 and len(refused) == 35
    assert store.counts()["queued"] == 5
    more = [_job("b1", 1.0), _job("b2", 2.0)]
    with pytest.raises(QueueFull):
        store.add_many(more, max_queued=6)
    assert store.get("b1") is None and store.get("b2") is None
    finished = _job("f", 1.0, status=JobStatus.SUCCEEDED, finished_at=1.0)
    store.add_many([finished], max_queued=5)  # a job finished at birth takes no room


def test_a_malformed_record_is_left_out(store, damage):
    """One damaged record never fails a read of the others."""
    store.add(_job("good", 1.0))
    store.add(_job("bad", 2.0))
    damage(store, "bad")
    assert store.get("bad") is None
    page, _ = store.page(limit=10)
    assert [job.id for job in page] == ["good"]
    assert [job.id for job in store.jobs_by_ids(["bad", "good"])] == ["good"]
    with pytest.raises(KeyError):
        store.update("bad", stage="x")


def test_a_retry_waits_for_its_delay(sqlite_store):
    store = sqlite_store
    store.add(_job("r", 1.0))
    run = store.claim_next()
    assert store.requeue("r", run.attempts, delay_seconds=0.3, error={"code": "x", "message": "y"})
    assert store.claim_next() is None  # not yet
    time.sleep(0.35)
    again = store.claim_next()
    assert again.id == "r" and again.attempts == 2 and again.error == {"code": "x", "message": "y"}
