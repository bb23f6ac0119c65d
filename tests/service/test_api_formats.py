"""Every output format through the service: submit, download, media types, the cache.

A real uvicorn server (tiny model, CPU) runs one job asking for every format; each result
is downloaded over HTTP and parsed with an independent reader.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from mlsharp.model import preset
from mlsharp.splat import FORMATS, MEDIA_TYPES, SUFFIXES
from tests.service.conftest import LiveServer, jpeg_bytes

TINY_GAUSSIANS = preset("tiny").num_gaussians
PHOTO = jpeg_bytes(80, 60, color=(120, 160, 200))


@pytest.fixture(scope="module")
def finished(tiny_checkpoint, tmp_path_factory):
    """A server and one succeeded job that asked for every format."""
    from tests.service.conftest import run_live_server

    with run_live_server(tmp_path_factory.mktemp("formats"), tiny_checkpoint) as server:
        files = {"file": ("garden.jpg", PHOTO, "image/jpeg")}
        created = server.client.post("/v1/jobs", files=files, data={"formats": ",".join(FORMATS)})
        assert created.status_code == 202, created.text
        job = server.wait_job(created.json()["id"])
        assert job["status"] == "succeeded", job
        yield server, job


def download(server: LiveServer, job: dict, fmt: str):
    response = server.client.get(job["links"]["results"][fmt])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPES[fmt]
    name = f"garden{SUFFIXES[fmt]}"
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
    return response.content


def test_every_format_has_its_own_result(finished) -> None:
    _, job = finished
    assert job["formats"] == list(FORMATS)
    assert set(job["links"]["results"]) == {*FORMATS, "preview"}  # + the job's thumbnail
    for fmt in FORMATS:
        assert job["links"]["results"][fmt] == f"/v1/jobs/{job['id']}/result?format={fmt}"


def test_scene_formats_download_and_parse(finished) -> None:
    server, job = finished
    reference = PlyData.read(io.BytesIO(download(server, job, "ply")))
    standard = PlyData.read(io.BytesIO(download(server, job, "ply-standard")))
    assert [e.name for e in standard.elements] == ["vertex"]
    assert standard["vertex"].count == reference["vertex"].count == TINY_GAUSSIANS
    assert len(download(server, job, "splat")) == 32 * TINY_GAUSSIANS
    spz = gzip.decompress(download(server, job, "spz"))
    magic, version, count = struct.unpack("<III", spz[:12])
    assert (magic, version, count) == (0x5053474E, 2, TINY_GAUSSIANS)
    with zipfile.ZipFile(io.BytesIO(download(server, job, "sog"))) as sog:
        assert json.loads(sog.read("meta.json"))["count"] == TINY_GAUSSIANS
        assert sog.read("quats.webp")[8:12] == b"WEBP"
    glb = download(server, job, "glb")
    assert glb[:4] == b"glTF" and struct.unpack("<I", glb[8:12])[0] == len(glb)
    (length,) = struct.unpack("<I", glb[12:16])
    document = json.loads(glb[20 : 20 + length])
    primitive = document["meshes"][0]["primitives"][0]
    assert document["accessors"][primitive["attributes"]["POSITION"]]["count"] == TINY_GAUSSIANS
    assert primitive["extensions"]["KHR_gaussian_splatting"]["kernel"] == "ellipse"


def test_status_reports_the_splat_count_and_file_sizes(finished) -> None:
    server, job = finished
    assert job["splats"] == TINY_GAUSSIANS and job["max_splats"] is None
    for fmt in FORMATS:
        assert job["sizes"][fmt] == len(download(server, job, fmt))


def test_max_splats_thins_the_result_and_is_part_of_the_cache_key(finished) -> None:
    server, job = finished
    files = {"file": ("thin.jpg", PHOTO, "image/jpeg")}
    form = {"formats": "ply,spz", "max_splats": "1000", "min_opacity": "0"}
    created = server.client.post("/v1/jobs", files=files, data=form)
    assert created.status_code == 202, created.text
    assert created.json()["cached"] is False  # the full job's files are not this result
    thin = server.wait_job(created.json()["id"])
    assert thin["status"] == "succeeded", thin
    assert thin["splats"] == 1000 and thin["max_splats"] == 1000
    ply = PlyData.read(io.BytesIO(server.client.get(thin["links"]["results"]["ply"]).content))
    assert ply["vertex"].count == 1000 and thin["sizes"]["ply"] < job["sizes"]["ply"]
    again = server.client.post("/v1/jobs", files=files, data=form).json()
    assert again["cached"] is True  # the same limits: the thinned files from the cache
    assert server.client.get(again["status_url"]).json()["splats"] == 1000
    for bad in ({"max_splats": "0"}, {"max_splats": "many"}, {"min_opacity": "1.5"}):
        refused = server.client.post("/v1/jobs", files=files, data=bad)
        assert refused.status_code == 422 and refused.json()["error"] == "validation_error"


def test_depth_formats_download_and_parse(finished) -> None:
    server, job = finished
    with Image.open(io.BytesIO(download(server, job, "depth"))) as png:
        assert png.mode == "I;16" and png.size == (80, 60)
        scale = float(png.text["depth_scale"])
        values = np.asarray(png).astype(np.float64)
    exact = np.load(io.BytesIO(download(server, job, "depth-npy")), allow_pickle=False)
    assert exact.shape == (60, 80) and exact.dtype == np.float32
    np.testing.assert_allclose(values * scale, exact, atol=scale / 2 + 1e-6)
    with Image.open(io.BytesIO(download(server, job, "depth-preview"))) as preview:
        assert preview.mode == "RGB" and preview.size == (80, 60)


def test_repeat_is_served_from_the_cache_with_every_format(finished) -> None:
    server, job = finished
    files = {"file": ("again.jpg", PHOTO, "image/jpeg")}
    created = server.client.post("/v1/jobs", files=files, data={"formats": "spz,depth"})
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["cached"] is True and body["status"] == "succeeded"
    hit = server.client.get(body["status_url"]).json()
    assert set(hit["links"]["results"]) == {"spz", "depth", "preview"}
    for fmt in ("spz", "depth"):
        again = server.client.get(hit["links"]["results"][fmt])
        assert again.status_code == 200
        assert again.content == download(server, job, fmt)
        assert f'filename="again{SUFFIXES[fmt]}"' in again.headers["content-disposition"]


def test_a_format_the_job_did_not_ask_for_is_404(finished) -> None:
    server, _ = finished
    files = {"file": ("one.jpg", jpeg_bytes(color=(1, 2, 3)), "image/jpeg")}
    created = server.client.post("/v1/jobs", files=files, data={"formats": "splat"})
    job = server.wait_job(created.json()["id"])
    assert job["status"] == "succeeded", job
    missing = server.client.get(f"/v1/jobs/{job['id']}/result", params={"format": "spz"})
    assert missing.status_code == 404
    assert "splat" in missing.json()["message"]
    unknown = server.client.post("/v1/jobs", files=files, data={"formats": "splat,obj"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "invalid_format"


def test_the_result_format_is_case_insensitive_like_submission(finished) -> None:
    server, job = finished
    url = f"/v1/jobs/{job['id']}/result"
    for spelled in ("SPZ", "Ply-Standard", " spz "):
        response = server.client.get(url, params={"format": spelled})
        assert response.status_code == 200, response.text
        expected = download(server, job, spelled.strip().lower())
        assert response.content == expected
