"""``/v1/jobs``, ``/v1/predict`` and ``/v1/cache`` over real HTTP against a live server.

Every test talks to a real uvicorn server (tiny model, CPU) with httpx: submission,
status, result download (ranges, ETags), the event stream, validation and the error
schema, idempotency, the result cache, cancellation, listing and the synchronous endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlsharp.splat import read_ply
from tests.service.conftest import PHOTO, LiveServer, jpeg_bytes

ERROR_KEYS = {"error", "message", "status_code", "path", "timestamp", "request_id"}
JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{16}$")
TIMING_KEYS = ("decode", "preprocess", "inference", "postprocess", "write", "total")


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """Check that ``response`` is a ``status`` answer in the one error schema."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    if code is not None:
        assert body["error"] == code, body
    assert body["status_code"] == status
    assert body["path"] == response.request.url.path
    assert body["message"]
    assert dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def post_job(
    server: LiveServer,
    photo: bytes | None = None,
    name: str = "photo.jpg",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST /v1/jobs with one file (``jpeg_bytes()`` by default) and optional form fields."""
    files = {"file": (name, jpeg_bytes() if photo is None else photo, "image/jpeg")}
    return server.client.post("/v1/jobs", files=files, data=form, headers=headers)


def submit_ok(server: LiveServer, photo: bytes | None = None, **kwargs) -> dict:
    """Submit a photo, expect 202, return the body."""
    response = post_job(server, photo, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()


def run_job(server: LiveServer, photo: bytes | None = None, **kwargs) -> dict:
    """Submit a photo and wait for its job to succeed; returns the finished job."""
    created = submit_ok(server, photo, **kwargs)
    job = server.wait_job(created["id"])
    assert job["status"] == "succeeded", job
    return job


def test_submit_poll_and_download_ply(server: LiveServer, tmp_path: Path) -> None:
    """A photo becomes a job that succeeds with timings and a downloadable PLY file."""
    response = post_job(server, PHOTO.read_bytes(), name="astronaut.jpg")
    assert response.status_code == 202, response.text
    created = response.json()
    assert set(created) == {"id", "status", "status_url", "cached"}
    assert created["status"] in ("queued", "succeeded")
    assert created["cached"] is False
    assert created["status_url"] == f"/v1/jobs/{created['id']}"
    assert response.headers["location"] == created["status_url"]

    job = server.wait_job(created["id"])
    assert job["status"] == "succeeded", job
    assert job["stage"] == "done"
    assert job["progress"] == 1.0
    assert job["input_name"] == "astronaut.jpg"
    assert job["formats"] == ["ply"]
    assert job["error"] is None
    assert job["started_at"] and job["finished_at"]
    for stage in TIMING_KEYS:
        assert job["timings"][stage] > 0, (stage, job["timings"])
    assert job["timings"]["total"] >= job["timings"]["inference"]
    ply_url = job["links"]["results"]["ply"]
    assert ply_url == f"/v1/jobs/{job['id']}/result?format=ply"
    assert job["links"]["self"] == created["status_url"]

    result = server.client.get(ply_url)
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/x-ply"
    assert result.headers["content-disposition"] == 'attachment; filename="astronaut.ply"'
    assert result.headers["etag"]
    assert result.content.startswith(b"ply\n")
    path = tmp_path / "download.ply"
    path.write_bytes(result.content)
    assert len(read_ply(path)) > 0


def test_result_supports_range_and_etag(server: LiveServer) -> None:
    """Results answer byte ranges with 206 and a matching If-None-Match with 304."""
    job = run_job(server)
    url = job["links"]["results"]["ply"]
    full = server.client.get(url)
    assert full.status_code == 200
    size = len(full.content)
    assert size > 100
    etag = full.headers["etag"]

    part = server.client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == full.content[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}"

    tail = server.client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.content == full.content[-10:]

    unchanged = server.client.get(url, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag

    other = server.client.get(url, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200
    assert other.content == full.content


def read_events(
    server: LiveServer, job_id: str, timeout: float = 30.0, on_event=None
) -> tuple[list[tuple[str, dict]], httpx.Headers]:
    """Follow a job's event stream to its end; returns ``(event name, data)`` pairs.

    ``on_event`` (if given) is called after each event is received.
    """
    events: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    with server.client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as stream:
        assert stream.status_code == 200
        headers = stream.headers
        name = "message"
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, f"event stream still open after {timeout}s"
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
                if on_event is not None:
                    on_event()
            elif line == "":
                name = "message"
    return events, headers


def test_event_stream_follows_a_job_to_its_end(server: LiveServer) -> None:
    """SSE sends the job as it changes, in progress order, and closes after ``event: end``."""
    created = submit_ok(server, jpeg_bytes(color=(10, 200, 60)))
    events, headers = read_events(server, created["id"])
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert events, "no event received"
    name, final = events[-1]
    assert name == "end"
    assert final["id"] == created["id"]
    assert final["status"] == "succeeded"
    assert final["progress"] == 1.0
    assert final["links"]["results"]["ply"]
    updates = [data for event, data in events if event == "message"]
    assert updates and updates[-1] == final
    progress = [data["progress"] for data in updates]
    assert progress == sorted(progress)
    assert all(event in ("message", "end") for event, _ in events)


def test_event_stream_ends_when_a_queued_job_is_canceled(live_server) -> None:
    """An API-only node: the stream of a queued job ends with status canceled on DELETE."""
    with live_server(workers=0) as server:
        created = submit_ok(server)
        result: dict = {}
        first_event = threading.Event()

        def follow() -> None:
            result["events"], _ = read_events(
                server, created["id"], timeout=20, on_event=first_event.set
            )

        reader = threading.Thread(target=follow)
        reader.start()
        assert first_event.wait(10), "no event received"
        assert server.client.delete(created["status_url"]).status_code == 202
        reader.join(25)
        assert not reader.is_alive(), "the event stream did not end"
        events = result["events"]
        assert events[0][0] == "message"
        assert events[0][1]["status"] == "queued"
        name, final = events[-1]
        assert name == "end"
        assert final["status"] == "canceled"


def test_focal_mm_is_stored(server: LiveServer) -> None:
    """A valid ``focal_mm`` form field is kept on the job."""
    created = submit_ok(server, jpeg_bytes(color=(1, 2, 3)), form={"focal_mm": "35.5"})
    job = server.client.get(f"/v1/jobs/{created['id']}").json()
    assert job["focal_mm"] == 35.5
    assert server.wait_job(created["id"])["status"] == "succeeded"


@pytest.mark.parametrize("value", ["-5", "0", "abc", "10001", "nan"])
def test_invalid_focal_mm_is_422(server: LiveServer, value: str) -> None:
    """Non-positive, non-numeric or absurd focal lengths are refused in the error schema."""
    response = post_job(server, form={"focal_mm": value})
    body = assert_error(response, 422, "validation_error")
    assert "focal_mm" in body["message"]


def test_formats_field(server: LiveServer) -> None:
    """``formats=ply`` is accepted; an unknown format is 422 ``invalid_format``."""
    created = submit_ok(server, jpeg_bytes(color=(4, 5, 6)), form={"formats": " PLY , ply "})
    job = server.wait_job(created["id"])
    assert job["formats"] == ["ply"]
    # The requested format, plus the thumbnail every finished job gets (setting `previews`).
    assert list(job["links"]["results"]) == ["ply", "preview"]

    body = assert_error(post_job(server, form={"formats": "ply,xyz"}), 422, "invalid_format")
    assert "xyz" in body["message"]


def test_bad_uploads_are_refused(server: LiveServer) -> None:
    """An empty file, a non-image and a missing file field are 422 in the error schema."""
    assert_error(post_job(server, b""), 422, "empty_file")
    assert_error(post_job(server, b"this is not an image", name="notes.txt"), 422, "invalid_image")
    assert_error(server.client.post("/v1/jobs", data={"focal_mm": "30"}), 422, "validation_error")
    total = server.client.get("/v1/jobs").json()["total"]
    assert total == 0


def test_idempotency_key(server: LiveServer) -> None:
    """Same key and body replay the job; same key, other body is 422; other key is new."""
    photo = jpeg_bytes(color=(120, 30, 220))
    headers = {"Idempotency-Key": "order-42"}
    first = post_job(server, photo, headers=headers)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = post_job(server, photo, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]

    other_body = post_job(server, jpeg_bytes(color=(0, 0, 0)), headers=headers)
    assert_error(other_body, 422, "idempotency_key_reused")
    other_focal = post_job(server, photo, headers=headers, form={"focal_mm": "50"})
    assert_error(other_focal, 422, "idempotency_key_reused")

    server.wait_job(first.json()["id"])
    fresh = post_job(server, photo, headers={"Idempotency-Key": "order-43"})
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in fresh.headers

    # A replay after the job finished still answers the same job, now succeeded.
    late = post_job(server, photo, headers=headers)
    assert late.json() == {**first.json(), "status": "succeeded"}

    assert_error(post_job(server, photo, headers={"Idempotency-Key": "has space"}), 400)


def test_cache_hit_stats_and_clear(server: LiveServer) -> None:
    """Identical pixels hit the cache; clearing it frees bytes but keeps job results."""
    photo = jpeg_bytes(96, 64, color=(33, 66, 99))
    first = run_job(server, photo, name="first.jpg")
    assert first["cached"] is False
    original = server.client.get(first["links"]["results"]["ply"]).content

    response = post_job(server, photo, name="second.jpg")
    assert response.status_code == 202
    created = response.json()
    assert created["cached"] is True
    assert created["status"] == "succeeded"
    assert created["id"] != first["id"]
    hit = server.client.get(created["status_url"]).json()
    assert hit["status"] == "succeeded" and hit["cached"] is True and hit["progress"] == 1.0
    assert hit["links"]["results"]["ply"].endswith("/result?format=ply")

    stats = server.client.get("/v1/cache").json()
    assert stats["enabled"] is True
    assert stats["hits"] >= 1
    assert stats["size"] >= 1
    assert stats["bytes"] > 0
    assert 0 < stats["hit_rate"] <= 1
    assert stats["hit_rate"] == round(stats["hits"] / (stats["hits"] + stats["misses"]), 4)

    cleared = server.client.post("/v1/cache/clear")
    assert cleared.status_code == 200
    assert cleared.json() == {"status": "success", "freed_bytes": stats["bytes"]}
    after = server.client.get("/v1/cache").json()
    assert after["size"] == 0 and after["bytes"] == 0 and after["hits"] == 0

    for job in (first, hit):
        download = server.client.get(job["links"]["results"]["ply"])
        assert download.status_code == 200, job["id"]
        assert download.content == original
    second = server.client.get(hit["links"]["results"]["ply"])
    assert second.headers["content-disposition"] == 'attachment; filename="second.ply"'

    # With the cache empty the same pixels are computed again.
    again = post_job(server, photo)
    assert again.json()["cached"] is False
    assert server.wait_job(again.json()["id"])["cached"] is False


def test_cancel_then_delete(live_server) -> None:
    """On an API-only node a queued job cancels (202), then deletes (204), then is gone."""
    with live_server(workers=0) as server:
        created = submit_ok(server)
        assert created["status"] == "queued"
        url = created["status_url"]

        canceled = server.client.delete(url)
        assert canceled.status_code == 202
        body = canceled.json()
        assert body["id"] == created["id"]
        assert body["status"] == "canceled"
        assert body["stage"] == "canceled"
        assert body["finished_at"]
        assert body["links"]["results"] == {}
        assert server.client.get(url).json()["status"] == "canceled"

        deleted = server.client.delete(url)
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert_error(server.client.get(url), 404, "not_found")
        assert_error(server.client.delete(url), 404, "not_found")
        assert not (server.data_dir / "jobs" / created["id"]).exists()


def test_delete_finished_job_removes_its_files(server: LiveServer) -> None:
    """DELETE of a succeeded job answers 204; its status and result are gone."""
    job = run_job(server, jpeg_bytes(color=(77, 7, 7)))
    assert (server.data_dir / "jobs" / job["id"]).is_dir()
    assert server.client.delete(job["links"]["self"]).status_code == 204
    assert_error(server.client.get(job["links"]["self"]), 404)
    assert_error(server.client.get(job["links"]["results"]["ply"]), 404)
    assert not (server.data_dir / "jobs" / job["id"]).exists()


def test_list_jobs_pages_and_filters(live_server) -> None:
    """GET /v1/jobs pages newest first with ``next``, filters by status, checks limits."""
    with live_server(workers=0) as server:
        colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
        ids = [submit_ok(server, jpeg_bytes(color=c))["id"] for c in colors]
        assert server.client.delete(f"/v1/jobs/{ids[0]}").status_code == 202

        page = server.client.get("/v1/jobs", params={"limit": 2}).json()
        assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
        assert [j["id"] for j in page["items"]] == [ids[2], ids[1]]
        assert page["next"] == "/v1/jobs?limit=2&offset=2"
        rest = server.client.get(page["next"]).json()
        assert [j["id"] for j in rest["items"]] == [ids[0]]
        assert rest["total"] == 3 and rest["next"] is None

        queued = server.client.get("/v1/jobs", params={"status": "queued", "limit": 1}).json()
        assert queued["total"] == 2
        assert [j["id"] for j in queued["items"]] == [ids[2]]
        assert queued["next"] == "/v1/jobs?limit=1&offset=1&status=queued"
        following = server.client.get(queued["next"]).json()
        assert [j["id"] for j in following["items"]] == [ids[1]]
        assert following["next"] is None
        canceled = server.client.get("/v1/jobs", params={"status": "canceled"}).json()
        assert [j["id"] for j in canceled["items"]] == [ids[0]]
        assert server.client.get("/v1/jobs?status=succeeded").json()["total"] == 0

        for query in ("limit=0", "limit=1000", "offset=-1", "status=bogus", "limit=x"):
            assert_error(server.client.get(f"/v1/jobs?{query}"), 422, "validation_error")


def test_result_of_unfinished_job_is_409(live_server) -> None:
    """A queued job has no result yet: 409 ``conflict``."""
    with live_server(workers=0) as server:
        created = submit_ok(server)
        body = assert_error(
            server.client.get(f"{created['status_url']}/result?format=ply"), 409, "conflict"
        )
        assert "queued" in body["message"]


def test_result_in_a_format_not_produced_is_404(server: LiveServer) -> None:
    """Asking a succeeded job for a format it did not produce is 404."""
    job = run_job(server, jpeg_bytes(color=(8, 8, 80)))
    body = assert_error(
        server.client.get(f"{job['links']['self']}/result?format=spz"), 404, "not_found"
    )
    assert "ply" in body["message"]


def test_predict_waits_for_the_result(server: LiveServer) -> None:
    """POST /v1/predict answers 200 once the job is done, with a downloadable URL."""
    files = {"file": ("scene.jpg", jpeg_bytes(color=(50, 150, 250)), "image/jpeg")}
    response = server.client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert JOB_ID.match(body["task_id"])
    assert body["status"] == "success"
    assert body["error"] is None
    assert body["urls"] == {"ply": body["url"], "preview": body["url"].replace("ply", "preview")}
    assert body["processing_time"] > 0
    download = server.client.get(body["url"])
    assert download.status_code == 200
    assert download.content.startswith(b"ply\n")
    assert download.headers["content-disposition"] == 'attachment; filename="scene.ply"'
    assert server.client.get(f"/v1/jobs/{body['task_id']}").json()["status"] == "succeeded"

    assert_error(server.client.post("/v1/predict", data={"formats": "ply"}), 422)


def test_job_ids_are_unguessable_and_unknown_ids_404(server: LiveServer) -> None:
    """Ids are random URL-safe tokens; any id that was not issued is 404 everywhere."""
    ids = [submit_ok(server, jpeg_bytes(color=(i, 0, 0)))["id"] for i in range(0, 60, 20)]
    assert len(set(ids)) == 3
    assert all(JOB_ID.match(i) for i in ids)
    assert len({i[4:8] for i in ids}) == 3  # no shared prefix, not a counter
    unknown = ids[0][:-1] + ("A" if ids[0][-1] != "A" else "B")
    for url in (
        f"/v1/jobs/{unknown}",
        f"/v1/jobs/{unknown}/events",
        f"/v1/jobs/{unknown}/result?format=ply",
        "/v1/jobs/job_1",
        "/v1/jobs/..%2F..%2Fetc",
    ):
        assert_error(server.client.get(url), 404, "not_found")
    assert_error(server.client.delete(f"/v1/jobs/{unknown}"), 404, "not_found")
    for job_id in ids:
        server.wait_job(job_id)


@pytest.mark.parametrize(("value", "status"), [("bytes=99999999-", 416), ("bytes=abc", 400)])
def test_bad_range_is_in_the_error_schema(server: LiveServer, value: str, status: int) -> None:
    """An unsatisfiable or malformed Range is refused in the error schema."""
    job = run_job(server, jpeg_bytes(color=(9, 99, 9)))
    response = server.client.get(job["links"]["results"]["ply"], headers={"Range": value})
    assert_error(response, status)


def test_cancel_a_running_job(server: LiveServer) -> None:
    """DELETE of a running job asks it to stop (202); it ends canceled without a result."""
    created = submit_ok(server, PHOTO.read_bytes())
    url = created["status_url"]
    deadline = time.monotonic() + 30
    while (status := server.client.get(url).json()["status"]) == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if status != "running":
        pytest.skip(f"the job was already {status} before it could be canceled")
    response = server.client.delete(url)
    assert response.status_code == 202
    assert response.json()["status"] in ("running", "canceled", "succeeded")
    final = server.wait_job(created["id"])
    if final["status"] == "succeeded":  # the cancel arrived after the last checkpoint
        pytest.skip("the job passed its last cancellation point before the request")
    assert final["status"] == "canceled"
    assert final["stage"] == "canceled"
    assert final["links"]["results"] == {}
    assert_error(server.client.get(f"{url}/result?format=ply"), 409, "conflict")
    # The worker goes on with the next job.
    assert run_job(server, jpeg_bytes(color=(3, 30, 3)))["status"] == "succeeded"


def test_predict_timeout_is_504_and_the_job_continues(live_server) -> None:
    """When the job does not finish within sync_timeout_seconds, /v1/predict answers 504."""
    with live_server(workers=0, sync_timeout_seconds=0.3) as server:
        files = {"file": ("slow.jpg", jpeg_bytes(), "image/jpeg")}
        started = time.monotonic()
        response = server.client.post("/v1/predict", files=files)
        assert time.monotonic() - started < 10
        body = assert_error(response, 504, "timeout")
        job_id = re.search(r"GET /v1/jobs/(\S+)", body["message"]).group(1)
        assert server.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_upload_over_the_body_limit_is_413(live_server) -> None:
    """A request body above max_upload_bytes is refused with 413 before any job exists."""
    with live_server(workers=0, max_upload_bytes=4096) as server:
        big = jpeg_bytes(256, 256, color=(1, 2, 3)) + b"\0" * 8192
        assert_error(post_job(server, big), 413, "payload_too_large")
        assert post_job(server, jpeg_bytes(16, 16)).status_code == 202
        assert server.client.get("/v1/jobs").json()["total"] == 1


def test_upload_file_names_are_sanitised(server: LiveServer) -> None:
    """Folders and control characters are stripped from the uploaded name."""
    job = run_job(server, jpeg_bytes(color=(12, 34, 56)), name="..\\../etc/my\u200bphoto\u2028.jpg")
    assert job["input_name"] == "myphoto.jpg"
    download = server.client.get(job["links"]["results"]["ply"])
    assert download.headers["content-disposition"] == 'attachment; filename="myphoto.ply"'
