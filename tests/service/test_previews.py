"""Job thumbnails: every finished job gets ``<stem>.preview.png`` as its ``preview`` result."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from mlsharp.service.preview import write_preview
from tests.service.conftest import PHOTO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def photo_bytes(width: int = 400, height: int = 300) -> bytes:
    """A real, non-square photo (the astronaut, cropped) as a JPEG."""
    with Image.open(PHOTO) as image:
        crop = image.convert("RGB").crop((0, 0, width, height))
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def fetch_preview(server, job: dict) -> Image.Image:
    """Download a job's preview through the API and check how it is served."""
    response = server.client.get(job["links"]["results"]["preview"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_finished_job_has_a_preview_thumbnail(server):
    """The preview is an extra output: a 320 px PNG keeping the photo's aspect, not blank."""
    created = server.submit(photo_bytes(400, 300), name="street.jpg")
    assert created.status_code == 202, created.text
    job = server.wait_job(created.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["formats"] == ["ply"]  # what the client asked for, unchanged
    assert set(job["links"]["results"]) == {"ply", "preview"}

    image = fetch_preview(server, job)
    assert image.size == (320, 240)
    assert image.mode == "RGB"
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.var() > 0  # the scene, not an empty (all-background) frame
    stored = server.state.storage.output_path(job["id"], "street.preview.png")
    assert stored.is_file()


def test_previews_off_gives_no_preview(live_server):
    """``previews=False``: the job has only the requested formats; the result is 404."""
    with live_server(previews=False) as server:
        job = server.wait_job(server.submit(photo_bytes()).json()["id"])
        assert job["status"] == "succeeded", job
        assert set(job["links"]["results"]) == {"ply"}
        missing = server.client.get(f"/v1/jobs/{job['id']}/result", params={"format": "preview"})
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        assert not server.state.storage.output_path(job["id"], "photo.preview.png").exists()


def test_cache_hit_job_has_the_preview(server):
    """A repeat answered from the result cache links the cached thumbnail too."""
    data = photo_bytes(300, 400)
    first = server.wait_job(server.submit(data).json()["id"])
    second = server.wait_job(server.submit(data).json()["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert (first["cached"], second["cached"]) == (False, True)
    assert "preview" in second["links"]["results"]
    one, two = fetch_preview(server, first), fetch_preview(server, second)
    assert two.size == (240, 320)
    assert np.array_equal(np.asarray(one), np.asarray(two))


def test_cached_entry_without_preview_is_computed_again(live_server):
    """An entry cached while previews were off is a miss once they are on; then a hit."""
    data = photo_bytes()
    with live_server(previews=False) as server:
        job = server.wait_job(server.submit(data).json()["id"])
        assert job["cached"] is False and "preview" not in job["links"]["results"]
    with live_server() as server:  # same data folder, so the same cache
        again = server.wait_job(server.submit(data).json()["id"])
        assert again["cached"] is False
        assert "preview" in again["links"]["results"]
        third = server.wait_job(server.submit(data).json()["id"])
        assert third["cached"] is True
        assert fetch_preview(server, third).size == (320, 240)


def test_preview_failure_is_logged_not_raised(tmp_path, caplog):
    """Rendering something that is not a scene returns False, logs and writes nothing."""
    dest = tmp_path / "scene.preview.png"
    with caplog.at_level(logging.WARNING, logger="mlsharp.worker"):
        assert write_preview(object(), dest) is False
    assert not dest.exists()
    assert "could not render the preview" in caplog.text
