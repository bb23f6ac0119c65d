"""A full disk never stops a real ``mlsharp serve``: writes fail, the service says so.

Regression test of issue 12 (defect 1): with the data disk full during a job, the worker
thread died for good (the job stayed ``running``, new jobs stayed ``queued``) while
``/v1/ready`` kept answering 200, and submissions got a 500 ``internal_error``.

The disk is filled from outside, portably and without root: ``prlimit`` lowers the
server process's file-size limit (``RLIMIT_FSIZE``), so its writes past that size fail
(``EFBIG``; SQLite reports a failed write) as on a full disk, while the other process
sharing the data directory goes on writing. Lifting the limit is the operator freeing
space.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.service.conftest import jpeg_bytes
from tests.service.test_api_jobs import assert_error

pytestmark = pytest.mark.skipif(
    not hasattr(resource, "prlimit"), reason="needs prlimit (Linux) to limit another process"
)

MB = 2**20


@contextmanager
def file_size_limit(pid: int, max_bytes: int) -> Iterator[None]:
    """Writes of process ``pid`` past ``max_bytes`` fail while the block runs."""
    before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, before[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, before)


def submit(url: str, seed: int) -> httpx.Response:
    photo = jpeg_bytes(color=(30 * seed % 256, 60, 90))  # distinct photos: no cache hits
    return httpx.post(f"{url}/v1/jobs", files={"file": (f"p{seed}.jpg", photo)}, timeout=30)


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_full_disk_is_reported_and_survived(serve_process, tmp_path) -> None:
    data_dir = tmp_path / "data"
    api = serve_process(data_dir, "--workers", "0")  # writes freely: takes the jobs
    worker = serve_process(data_dir)  # the one whose disk fills up
    wait_for(lambda: httpx.get(f"{worker.url}/v1/ready").status_code == 200, "the model")

    with file_size_limit(worker.process.pid, 1):  # nothing can be written
        # A submission on a full disk is refused with a clear 507.
        assert_error(submit(worker.url, 0), 507, "storage_full")
        # The worker cannot take the queued job: it waits, and readiness says why.
        waiting = submit(api.url, 1).json()["id"]

        def not_ready() -> bool:
            return httpx.get(f"{worker.url}/v1/ready").status_code == 503

        wait_for(not_ready, "readiness to report the failing worker", timeout=60)
        ready = httpx.get(f"{worker.url}/v1/ready").json()
        assert ready["ready"] is False and "full" in ready["error"], ready
        assert job(api.url, waiting)["status"] == "queued"

    # Space is back: the same worker runs the job, readiness recovers.
    wait_for(lambda: job(api.url, waiting)["status"] == "succeeded", "the queued job")
    wait_for(lambda: httpx.get(f"{worker.url}/v1/ready").status_code == 200, "readiness")

    with file_size_limit(worker.process.pid, 2 * MB):  # the database fits, a result not
        broken = submit(api.url, 2).json()["id"]
        wait_for(lambda: job(api.url, broken)["status"] not in ("queued", "running"), "a job")
    failed = job(api.url, broken)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "storage_full", failed
    assert "free space" in failed["error"]["message"]

    # The worker thread lived through all of it.
    after = submit(api.url, 3).json()["id"]
    wait_for(lambda: job(api.url, after)["status"] == "succeeded", "the job after")
    assert worker.process.poll() is None and api.process.poll() is None
