"""Restarts lose nothing: queued jobs survive, running ones are re-queued, results stay.

These run ``mlsharp serve`` as a real child process and stop it the hard way.
"""

from __future__ import annotations

import signal
import time

import httpx

from tests.service.conftest import jpeg_bytes


def _submit(url: str, color: tuple[int, int, int]) -> str:
    files = {"file": (f"p{color[0]}.jpg", jpeg_bytes(color=color), "image/jpeg")}
    response = httpx.post(f"{url}/v1/jobs", files=files, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait_all(url: str, ids: list[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {i: httpx.get(f"{url}/v1/jobs/{i}", timeout=10).json() for i in ids}
        if all(j["status"] in ("succeeded", "failed", "canceled") for j in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, f"jobs not finished: {jobs}"
        time.sleep(0.1)


def test_queued_jobs_survive_a_killed_server(serve_process, tmp_path):
    """Jobs queued on a server killed with SIGKILL all complete after a restart."""
    data_dir = tmp_path / "data"
    api_only = serve_process(data_dir, "--workers", "0")  # accepts jobs, runs none
    ids = [_submit(api_only.url, (40 * i, 100, 200)) for i in range(1, 4)]
    assert all(httpx.get(f"{api_only.url}/v1/jobs/{i}").json()["status"] == "queued" for i in ids)
    api_only.stop(signal.SIGKILL)

    worker = serve_process(data_dir)
    jobs = _wait_all(worker.url, ids)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    for job_id in ids:
        result = httpx.get(f"{worker.url}/v1/jobs/{job_id}/result?format=ply", timeout=30)
        assert result.status_code == 200
        assert result.content.startswith(b"ply\n")


def test_running_job_is_requeued_and_finished_results_stay(serve_process, tmp_path):
    """A job left 'running' by a dead process runs again; finished results outlive restarts."""
    data_dir = tmp_path / "data"
    first = serve_process(data_dir)
    done_id = _submit(first.url, (1, 2, 3))
    _wait_all(first.url, [done_id])
    assert first.stop() in (0, -signal.SIGTERM)  # graceful stop
    assert "Application shutdown complete" in first.log()

    # Simulate a crash mid-job: mark a queued job 'running' in the store, as a dead
    # worker would have left it, then start the server.
    api_only = serve_process(data_dir, "--workers", "0")
    stuck_id = _submit(api_only.url, (9, 9, 9))
    api_only.stop(signal.SIGKILL)
    from mlsharp.service.jobs.sqlite import SQLiteJobStore

    store = SQLiteJobStore(data_dir / "jobs.sqlite3")
    assert store.claim_next().id == stuck_id
    store.close()

    second = serve_process(data_dir)
    jobs = _wait_all(second.url, [stuck_id, done_id])
    assert jobs[stuck_id]["status"] == "succeeded"
    assert jobs[done_id]["status"] == "succeeded"
    result = httpx.get(f"{second.url}/v1/jobs/{done_id}/result?format=ply", timeout=30)
    assert result.status_code == 200 and result.content.startswith(b"ply\n")
