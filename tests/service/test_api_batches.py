"""``/v1/batches`` over real HTTP against a live server.

Several photos (or one zip of photos) become one job each; the batch reports counts per
status and streams a zip of every result. Refused images are listed, limits are enforced
and every failure answers in the one error schema.
"""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import pytest

from tests.service.conftest import LiveServer, jpeg_bytes
from tests.service.test_api_jobs import assert_error


def upload(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` fields (repeated) for ``(name, data)`` pairs."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def post_batch(
    server: LiveServer,
    *items: tuple[str, bytes],
    headers: dict[str, str] | None = None,
    **form: str,
) -> httpx.Response:
    """POST /v1/batches with the given files and form fields."""
    return server.client.post(
        "/v1/batches", files=upload(*items), data=form or None, headers=headers
    )


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive holding ``members`` (name -> bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wait_batch(server: LiveServer, batch_id: str, timeout: float = 60.0) -> dict:
    """Poll until the batch is completed; returns its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        body = server.client.get(f"/v1/batches/{batch_id}").json()
        if body["status"] == "completed":
            return body
        assert time.monotonic() < deadline, f"batch {batch_id} still {body['status']}"
        time.sleep(0.05)


def test_batch_of_three_and_its_archive(server: LiveServer) -> None:
    """Three photos give three jobs; the archive holds each result once, names distinct."""
    response = post_batch(
        server,
        ("same.jpg", jpeg_bytes(color=(200, 0, 0))),
        ("same.jpg", jpeg_bytes(color=(0, 200, 0))),
        ("other.jpg", jpeg_bytes(color=(0, 0, 200))),
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["id"].startswith("batch_")
    assert created["rejected"] == []
    assert len(created["jobs"]) == 3
    assert len({j["id"] for j in created["jobs"]}) == 3
    assert [j["input_name"] for j in created["jobs"]] == ["same.jpg", "same.jpg", "other.jpg"]
    assert all(j["batch_id"] == created["id"] for j in created["jobs"])
    assert created["status"] in ("queued", "running", "completed")
    assert created["archive_url"] == f"/v1/batches/{created['id']}/archive"
    assert sum(created["counts"].values()) == 3

    batch = wait_batch(server, created["id"])
    assert batch["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 0,
        "canceled": 0,
    }
    jobs = batch["jobs"]
    assert [j["id"] for j in jobs] == [j["id"] for j in created["jobs"]]
    assert all(j["status"] == "succeeded" for j in jobs)

    archive = server.client.get(batch["archive_url"])
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/zip"
    assert archive.headers["content-disposition"] == f'attachment; filename="{created["id"]}.zip"'
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert opened.testzip() is None
        names = opened.namelist()
        members = {name: opened.read(name) for name in names}
    assert len(names) == 3 and len(set(names)) == 3
    assert all(name.endswith(".ply") for name in names)
    expected = {
        "same.ply": jobs[0],
        f"{jobs[1]['id']}/same.ply": jobs[1],
        "other.ply": jobs[2],
    }
    assert set(names) == set(expected)
    for name, job in expected.items():
        download = server.client.get(job["links"]["results"]["ply"])
        assert download.status_code == 200
        assert members[name] == download.content, name
        assert members[name].startswith(b"ply\n")


def test_zip_upload_expands_to_its_images(server: LiveServer) -> None:
    """One .zip becomes one job per image inside; text files and __MACOSX are skipped."""
    bundle = make_zip(
        {
            "holiday/a.jpg": jpeg_bytes(color=(10, 20, 30)),
            "b.JPG": jpeg_bytes(color=(30, 20, 10)),
            "readme.txt": b"not a photo",
            "__MACOSX/holiday/._a.jpg": b"\x00\x05\x16\x07 resource fork",
            "holiday/": b"",
        },
        compression=zipfile.ZIP_DEFLATED,
    )
    response = post_batch(server, ("photos.zip", bundle))
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["rejected"] == []
    assert sorted(j["input_name"] for j in created["jobs"]) == ["a.jpg", "b.JPG"]
    batch = wait_batch(server, created["id"])
    assert batch["counts"]["succeeded"] == 2
    with zipfile.ZipFile(io.BytesIO(server.client.get(batch["archive_url"]).content)) as z:
        assert sorted(z.namelist()) == ["a.ply", "b.ply"]


def test_zip_without_images_is_422(server: LiveServer) -> None:
    """A zip holding no supported image is refused as an empty batch."""
    bundle = make_zip({"readme.txt": b"hello", "__MACOSX/._x.jpg": b"junk"})
    assert_error(post_batch(server, ("nothing.zip", bundle)), 422, "empty_batch")


def test_bad_files_are_rejected_individually(server: LiveServer) -> None:
    """A bad file next to a good photo is listed in ``rejected``; only bad files is 422."""
    response = post_batch(
        server,
        ("good.jpg", jpeg_bytes(color=(90, 90, 200))),
        ("notes.txt", b"certainly not an image"),
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert [j["input_name"] for j in created["jobs"]] == ["good.jpg"]
    assert len(created["rejected"]) == 1
    rejected = created["rejected"][0]
    assert rejected["name"] == "notes.txt"
    assert rejected["error"] == "invalid_image"
    assert rejected["message"]
    assert sum(created["counts"].values()) == 1
    assert wait_batch(server, created["id"])["counts"]["succeeded"] == 1

    body = assert_error(
        post_batch(server, ("a.txt", b"nope"), ("b.bin", b"\x00\x01\x02")), 422, "invalid_image"
    )
    assert "a.txt" in body["message"]
    assert_error(post_batch(server, ("empty.jpg", b"")), 422, "empty_file")
    assert_error(server.client.post("/v1/batches", data={"formats": "ply"}), 422)
    assert_error(post_batch(server, ("a.jpg", jpeg_bytes()), formats="xyz"), 422, "invalid_format")
    assert_error(post_batch(server, ("a.jpg", jpeg_bytes()), focal_mm="-1"), 422)


def test_form_fields_apply_to_every_job(server: LiveServer) -> None:
    """``focal_mm`` and ``formats`` of the batch are recorded on each of its jobs."""
    response = post_batch(
        server,
        ("x.jpg", jpeg_bytes(color=(1, 100, 1))),
        ("y.jpg", jpeg_bytes(color=(100, 1, 1))),
        focal_mm="28",
        formats="ply",
    )
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [j["focal_mm"] for j in jobs] == [28.0, 28.0]
    assert [j["formats"] for j in jobs] == [["ply"], ["ply"]]
    wait_batch(server, response.json()["id"])


def test_archive_of_unfinished_batch(live_server) -> None:
    """Before every job is finished the archive is 409, or an empty zip with partial=true."""
    with live_server(workers=0) as server:
        response = post_batch(
            server,
            ("a.jpg", jpeg_bytes(color=(5, 5, 5))),
            ("b.jpg", jpeg_bytes(color=(6, 6, 6))),
        )
        assert response.status_code == 202
        created = response.json()
        assert created["status"] == "queued"
        assert created["counts"]["queued"] == 2
        url = created["archive_url"]

        body = assert_error(server.client.get(url), 409, "conflict")
        assert "partial=true" in body["message"]
        partial = server.client.get(url, params={"partial": "true"})
        assert partial.status_code == 200
        assert partial.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(partial.content)) as opened:
            assert opened.namelist() == []

        # Once every job is finished (here: canceled) the batch is completed.
        for job in created["jobs"]:
            assert server.client.delete(job["links"]["self"]).status_code == 202
        batch = server.client.get(f"/v1/batches/{created['id']}").json()
        assert batch["status"] == "completed"
        assert batch["counts"]["canceled"] == 2
        done = server.client.get(url)
        assert done.status_code == 200
        with zipfile.ZipFile(io.BytesIO(done.content)) as opened:
            assert opened.namelist() == []


def test_unknown_batch_is_404(server: LiveServer) -> None:
    """Unknown batch ids are 404 for the batch and its archive."""
    assert_error(server.client.get("/v1/batches/batch_doesnotexist00"), 404, "not_found")
    assert_error(server.client.get("/v1/batches/batch_nope/archive"), 404, "not_found")


def test_too_many_files_is_413(live_server) -> None:
    """More files than ``max_batch_files`` (as uploads or inside a zip) is 413."""
    with live_server(workers=0, max_batch_files=2) as server:
        photos = [(f"p{i}.jpg", jpeg_bytes(color=(i, i, i))) for i in range(3)]
        body = assert_error(post_batch(server, *photos), 413, "too_many_files")
        assert "2" in body["message"]
        bundle = make_zip(dict(photos))
        assert_error(post_batch(server, ("three.zip", bundle)), 413, "too_many_files")
        assert server.client.get("/v1/jobs").json()["total"] == 0
        assert post_batch(server, *photos[:2]).status_code == 202


def test_corrupt_zip_is_422(server: LiveServer) -> None:
    """Bytes that start like a zip but are not one are 422 ``invalid_zip``."""
    garbage = b"PK\x03\x04" + bytes(range(256)) * 4
    assert_error(post_batch(server, ("broken.zip", garbage)), 422, "invalid_zip")
    truncated = make_zip({"a.jpg": jpeg_bytes()})[:-30]
    assert_error(post_batch(server, ("cut.zip", truncated)), 422, "invalid_zip")
    assert server.client.get("/v1/jobs").json()["total"] == 0


def _corrupt_deflate_zip() -> bytes:
    """A well-formed zip whose one deflated member has an invalid deflate stream."""
    data = bytearray(make_zip({"a.jpg": jpeg_bytes()}, compression=zipfile.ZIP_DEFLATED))
    start = 30 + len("a.jpg")  # local file header + name; no extra field
    data[start : start + 12] = b"\xff" * 12
    return bytes(data)


def _encrypted_member_zip() -> bytes:
    """A zip whose member is flagged as encrypted (general purpose bit 0)."""
    data = bytearray(make_zip({"a.jpg": jpeg_bytes()}))
    data[6] |= 1  # local file header flags
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 1  # central directory flags
    return bytes(data)


@pytest.mark.parametrize("make", [_corrupt_deflate_zip, _encrypted_member_zip])
def test_undecodable_zip_member_is_422(server: LiveServer, make) -> None:
    """A zip whose member cannot be extracted is the client's fault: 422 ``invalid_zip``."""
    response = post_batch(server, ("bad.zip", make()))
    assert_error(response, 422, "invalid_zip")


def test_batch_refused_for_a_full_queue_is_503(live_server) -> None:
    """When the queue is full a batch is refused like a single job: 503 with Retry-After."""
    with live_server(workers=0, max_queue=1) as server:
        assert post_batch(server, ("a.jpg", jpeg_bytes(color=(1, 1, 1)))).status_code == 202
        single = server.client.post(
            "/v1/jobs", files={"file": ("b.jpg", jpeg_bytes(color=(2, 2, 2)), "image/jpeg")}
        )
        assert_error(single, 503, "queue_full")
        assert single.headers["retry-after"] == "10"
        response = post_batch(server, ("c.jpg", jpeg_bytes(color=(3, 3, 3))))
        assert_error(response, 503, "queue_full")
        assert response.headers["retry-after"] == "10"
