"""Client-given names over real HTTP: zips made on Windows, long and hostile file names.

Every name a client sends (an upload's file name, a zip member) becomes a job's
``input_name``, its result file names, names in the batch archive and the
``Content-Disposition`` of downloads. None of them may break a job, a download, a cache
hit or a batch.
"""

from __future__ import annotations

import io
import zipfile
from urllib.parse import unquote

from tests.service.conftest import LiveServer, jpeg_bytes
from tests.service.test_api_batches import make_zip, post_batch, wait_batch

#: 77 CJK characters: 231 bytes of UTF-8, plus ".jpg".
LONG_CJK = "写" * 77 + ".jpg"


def test_zip_made_on_windows_gives_downloadable_results(server: LiveServer) -> None:
    """Members named ``photos\\a.jpg`` keep ``a.jpg``; results and the archive download."""
    archive = make_zip(
        {
            "photos\\a.jpg": jpeg_bytes(color=(10, 200, 30)),
            "photos\\sub\\b.jpg": jpeg_bytes(color=(200, 10, 30)),
        }
    )
    created = post_batch(server, ("photos.zip", archive))
    assert created.status_code == 202, created.text
    body = created.json()
    assert sorted(j["input_name"] for j in body["jobs"]) == ["a.jpg", "b.jpg"]
    batch = wait_batch(server, body["id"])
    assert batch["counts"]["succeeded"] == 2, batch
    for job in batch["jobs"]:
        download = server.client.get(job["links"]["results"]["ply"])
        assert download.status_code == 200, download.text
        assert download.content.startswith(b"ply\n")
    response = server.client.get(f"/v1/batches/{body['id']}/archive")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as result:
        assert sorted(result.namelist()) == ["a.ply", "b.ply"]
        assert result.testzip() is None


def test_long_cjk_name_succeeds_downloads_and_hits_the_cache(server: LiveServer) -> None:
    """A 235-byte name is bounded: the job succeeds, downloads carry a UTF-8 file name,
    and the same photo again is a cache hit (it was a 500)."""
    photo = jpeg_bytes(color=(33, 66, 99))
    first = server.submit(photo, name=LONG_CJK)
    assert first.status_code == 202, first.text
    job = server.wait_job(first.json()["id"])
    assert job["status"] == "succeeded", job
    assert len(job["input_name"].encode()) <= 128
    assert job["input_name"].startswith("写") and job["input_name"].endswith(".jpg")
    download = server.client.get(job["links"]["results"]["ply"])
    assert download.status_code == 200
    disposition = download.headers["content-disposition"]
    assert disposition.isascii()
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == job["input_name"][: -len(".jpg")] + ".ply"

    again = server.submit(photo, name=LONG_CJK)
    assert again.status_code == 202, again.text
    assert again.json()["cached"] is True


def test_long_names_in_a_batch_orphan_no_job(server: LiveServer) -> None:
    """A batch whose photos have long names (one a cache hit) is one complete batch."""
    photo = jpeg_bytes(color=(7, 77, 177))
    assert server.wait_job(server.submit(photo, name="seed.jpg").json()["id"])["status"] == (
        "succeeded"
    )
    created = post_batch(
        server,
        ("一" * 80 + ".jpg", jpeg_bytes(color=(1, 177, 77))),
        ("二" * 80 + ".jpg", photo),  # a cache hit
    )
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["rejected"] == []
    batch = wait_batch(server, body["id"])
    assert batch["counts"]["succeeded"] == 2
    listed = server.client.get("/v1/jobs", params={"limit": 200}).json()["items"]
    in_batches = [j for j in listed if j["batch_id"] is not None]
    assert {j["id"] for j in in_batches} == {j["id"] for j in batch["jobs"]}
    archive = server.client.get(f"/v1/batches/{body['id']}/archive")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as result:
        names = result.namelist()
    assert len(names) == 2 and all(len(n.encode()) <= 128 for n in names)


def test_control_characters_never_reach_names(server: LiveServer) -> None:
    """NUL, escape and delete characters are removed from upload and zip member names."""
    boundary = "mlsharp-boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="a\x00b\x1b[1mc\x7fd.jpg"\r\n'
        + b"Content-Type: image/jpeg\r\n\r\n"
        + jpeg_bytes(color=(5, 6, 7))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    direct = server.client.post(
        "/v1/jobs",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert direct.status_code == 202, direct.text
    job = server.wait_job(direct.json()["id"])
    assert job["input_name"] == "ab[1mcd.jpg"
    assert job["status"] == "succeeded"
    archive = make_zip({"x\x07y\u202e.jpg": jpeg_bytes(color=(8, 9, 10))})
    created = post_batch(server, ("z.zip", archive))
    assert created.status_code == 202, created.text
    assert [j["input_name"] for j in created.json()["jobs"]] == ["xy.jpg"]
