"""One bad photo (or a bad prediction) fails only its own job, clearly, over real HTTP.

* A user focal length outside 1..10000 mm is refused at submission (``1e-300`` made the
  network's output non-finite and failed the whole inference batch).
* An absurd EXIF focal length falls back to the default 30 mm (with a logged warning).
* A prediction holding NaN or infinite values fails its job with ``non_finite_output``
  instead of "succeeding" with a file no viewer can show.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from mlsharp.imaging import focal_length_px
from mlsharp.splat import read_ply
from tests.service.conftest import jpeg_bytes
from tests.service.test_api_jobs import assert_error, post_job


def nan_checkpoint(tiny_checkpoint: Path, dest: Path) -> Path:
    """The tiny checkpoint with NaN in the bias of the last texture channel (an opacity):
    the network then predicts NaN opacities while every other attribute stays finite."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["prediction_head.texture_prediction_head.bias"][-1] = float("nan")
    torch.save(state, dest)
    return dest


def jpeg_with_focal_exif(f35: int, color: tuple[int, int, int]) -> bytes:
    """A 64x48 JPEG whose EXIF says ``FocalLengthIn35mmFilm = f35``."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = f35  # FocalLengthIn35mmFilm, in the Exif sub-IFD
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_absurd_user_focal_is_refused_and_other_jobs_run(live_server) -> None:
    """With batching on, an absurd focal_mm is a 422 at once (1e-300 was accepted and
    failed its whole batch); the other photos of the moment share forwards and succeed."""
    with live_server(batch_size=4, cache_enabled=False) as server:
        for value in ("1e-300", "0.5", "10000.5"):
            response = post_job(server, form={"focal_mm": value})
            body = assert_error(response, 422, "validation_error")
            assert "focal_mm" in body["message"]
        ids = [post_job(server, jpeg_bytes(color=(i * 40, 90, 30))).json()["id"] for i in range(3)]
        assert [server.wait_job(i)["status"] for i in ids] == ["succeeded"] * 3


def test_absurd_exif_focal_falls_back_to_the_default(server, caplog) -> None:
    """EXIF FocalLengthIn35mmFilm = 65535 mm is ignored: the scene uses 30 mm, and the
    server log says why."""
    caplog.set_level(logging.WARNING, logger="mlsharp.worker")
    response = post_job(server, jpeg_with_focal_exif(65535, (90, 180, 45)))
    assert response.status_code == 202, response.text
    job = server.wait_job(response.json()["id"])
    assert job["status"] == "succeeded", job
    scene = server.client.get(job["links"]["results"]["ply"]).content
    path = server.data_dir / "downloaded.ply"
    path.write_bytes(scene)
    assert read_ply(path).focal_px == pytest.approx(focal_length_px(30.0, 64, 48))
    assert any(
        job["id"] in r.getMessage() and "FocalLengthIn35mmFilm 65535" in r.getMessage()
        for r in caplog.records
    )


def test_non_finite_prediction_fails_the_job(live_server, tiny_checkpoint, tmp_path) -> None:
    """NaN in the output is a failed job with code non_finite_output, never a result."""
    broken = nan_checkpoint(tiny_checkpoint, tmp_path / "nan.pt")
    with live_server(checkpoint=str(broken)) as server:
        response = post_job(server)
        assert response.status_code == 202, response.text
        job = server.wait_job(response.json()["id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "non_finite_output"
        assert "NaN or infinite" in job["error"]["message"]
        assert job["links"]["results"] == {}
        outputs = list((server.data_dir / "jobs" / job["id"]).rglob("*.ply"))
        assert outputs == []
