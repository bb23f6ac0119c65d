"""``/v1/ready`` tells a load balancer when this instance's workers cannot run jobs.

(The failing-worker case, a full disk, is in test_full_disk.py, against a real process.)
"""

from __future__ import annotations

import time

from tests.service.conftest import jpeg_bytes


def test_a_run_past_the_time_limit_makes_the_instance_unready(live_server) -> None:
    """While a worker has spent longer than ``job_time_limit_seconds`` on one job, the
    instance is not ready (503, the error names the job); it is again once the job ends."""
    with live_server(job_time_limit_seconds=0.05, resolution=1024) as server:
        assert server.client.get("/v1/ready").status_code == 200
        job_id = server.submit(jpeg_bytes(color=(5, 50, 150))).json()["id"]
        seen: list[dict] = []
        while server.client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
            answer = server.client.get("/v1/ready")
            if answer.status_code == 503:
                seen.append(answer.json())
            time.sleep(0.01)
        assert seen, "readiness never reported the long run"
        assert f"running job {job_id}" in seen[-1]["error"], seen[-1]
        assert "longer than the 0.05s time limit" in seen[-1]["error"]
        assert server.client.get("/v1/ready").status_code == 200
