"""``max_queue`` holds under concurrent submissions, and a batch counts all its photos.

Regression tests of issue 12 (defect 7): the limit was checked before the insert, so
concurrent submits raced past it (a limit of 5 reached 10-14); a batch was admitted
photo by photo, so part of it could be queued and the rest refused.
"""

from __future__ import annotations

import threading

import httpx

from tests.service.conftest import jpeg_bytes
from tests.service.test_api_batches import post_batch
from tests.service.test_api_jobs import assert_error


def test_concurrent_submits_never_exceed_max_queue(live_server) -> None:
    """20 clients submit at once against a limit of 5: at most 5 jobs are queued, every
    other answer is a 503 ``queue_full``."""
    with live_server(workers=0, max_queue=5) as server:
        start = threading.Barrier(20)
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def submit(index: int) -> None:
            photo = jpeg_bytes(color=(index * 10, 7, 7))
            with httpx.Client(base_url=server.url, timeout=60) as client:
                start.wait()
                response = client.post(
                    "/v1/jobs", files={"file": (f"p{index}.jpg", photo, "image/jpeg")}
                )
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        accepted = [r for r in answers if r.status_code == 202]
        assert len(answers) == 20
        for refused in (r for r in answers if r.status_code != 202):
            assert_error(refused, 503, "queue_full")
        assert len(accepted) == 5, [r.status_code for r in answers]
        assert server.client.get("/v1/stats").json()["queue_depth"] == 5


def test_a_batch_is_queued_whole_or_not_at_all(live_server) -> None:
    """A batch of 4 photos with room for 3 is refused whole (503, nothing queued); one
    of 3 photos fits."""
    with live_server(workers=0, max_queue=3) as server:
        photos = [(f"p{i}.jpg", jpeg_bytes(color=(i * 40, 9, 9))) for i in range(4)]
        refused = post_batch(server, *photos)
        assert_error(refused, 503, "queue_full")
        assert server.client.get("/v1/jobs").json()["total"] == 0
        accepted = post_batch(server, *photos[:3])
        assert accepted.status_code == 202, accepted.text
        assert len(accepted.json()["jobs"]) == 3
        assert server.client.get("/v1/stats").json()["queue_depth"] == 3
