"""A real ``mlsharp serve`` that runs out of memory keeps serving.

The test caps the server's address space from outside (``prlimit`` on its pid) just above
what it maps once warm, as tests/test_memory.py does inside one process, so the next
forward's allocations really fail; then it lifts the cap.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.service.conftest import jpeg_bytes

MB = 2**20

# glibc keeps freed memory for reuse (per-thread arenas, a heap top it trims lazily, an mmap
# threshold that grows with what was freed), so a forward after the warm one can fit in
# memory the process already maps and the cap never bites: a clean-clone run once saw the
# capped job succeed. One arena and fixed thresholds make every large tensor a fresh mmap
# that is unmapped when freed, so the capped forward must map new memory, and fails.
FRESH_MAPPINGS_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024),
}


def vm_size(pid: int) -> int:
    """Bytes of address space process ``pid`` has mapped."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


@contextmanager
def address_space_cap(pid: int, margin: int) -> Iterator[None]:
    """Cap ``pid``'s address space at its current size plus ``margin``, then restore."""
    before = resource.prlimit(pid, resource.RLIMIT_AS)
    resource.prlimit(pid, resource.RLIMIT_AS, (vm_size(pid) + margin, before[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, before)


def wait_done(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def submit(url: str, seed: int) -> str:
    color = (40 * seed % 256, 90, 200 - 30 * seed % 200)  # distinct photos: no cache hits
    response = httpx.post(f"{url}/v1/jobs", files={"file": ("p.jpg", jpeg_bytes(color=color))})
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_out_of_memory_fails_the_job_not_the_server(serve_process, tmp_path) -> None:
    server = serve_process(tmp_path / "data", "--resolution", "1024", env=FRESH_MAPPINGS_MALLOC)
    pid = server.process.pid
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert wait_done(server.url, submit(server.url, 0))["status"] == "succeeded"  # warm

    # Barely any room above what the warm server maps: the forward cannot allocate.
    with address_space_cap(pid, 8 * MB):
        failed = wait_done(server.url, submit(server.url, 1))
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "out_of_memory"
    message = failed["error"]["message"]
    assert message.startswith("out of memory on cpu while running 1 image at 1024x1024 px")
    assert "a lower precision" in message and "a smaller resolution (512)" in message
    assert metric(server.url, 'mlsharp_memory_releases_total{reason="oom"}') == 1

    # Same process, cap lifted: it keeps serving.
    assert server.process.poll() is None
    assert wait_done(server.url, submit(server.url, 2))["status"] == "succeeded"
    assert httpx.get(f"{server.url}/v1/health").status_code == 200
