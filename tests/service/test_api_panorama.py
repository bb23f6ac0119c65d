"""Panoramas over the API: the ``panorama`` form field, XMP detection, per-view stages on
the event stream, the result, the cache and the errors (real server, tiny model)."""

from __future__ import annotations

import numpy as np

from mlsharp.splat import read_ply
from tests.panorama.room import encode, equirect_room, gpano_xmp
from tests.service.conftest import LiveServer
from tests.service.test_api_jobs import assert_error, post_job, read_events, submit_ok

VIEWS = 6


def run_job(server: LiveServer, photo: bytes, **kwargs) -> dict:
    """Submit and wait for success (a panorama is six forwards: a longer wait)."""
    job = server.wait_job(submit_ok(server, photo, **kwargs)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    return job


def test_a_panorama_job_reports_each_view_and_makes_one_scene(server: LiveServer) -> None:
    pixels = encode(equirect_room(256))
    photo = run_job(server, pixels, name="room.png")  # the same pixels as a photo first
    assert photo["panorama"] is False
    created = submit_ok(server, pixels, name="room.png", form={"panorama": "true"})
    assert not created["cached"]  # a panorama is not the cached photo of its pixels
    events, _ = read_events(server, created["id"], timeout=600)
    final = events[-1][1]
    assert final["status"] == "succeeded", final
    assert final["panorama"] is True
    stages = [data["stage"] for _, data in events]
    # The stream shows the views in order (coalesced events may skip some) and the merge.
    views = [s for s in stages if s.startswith("view ")]
    assert views and views == sorted(views) and all(s.endswith(f"/{VIEWS}") for s in views)
    order = ["decode", "views", *views, "merge", "write", "done"]
    shown = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    known = [s for s in shown if s in order]
    assert known == sorted(known, key=order.index) and known[-1] == "done"
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)
    assert {"cut", "merge", "inference"} <= set(final["timings"])
    path = server.data_dir / "room.ply"
    path.write_bytes(server.client.get(final["links"]["results"]["ply"]).content)
    scene = read_ply(path)
    assert scene.metadata["panorama"] is True
    assert len(scene) > 3 * 131072  # six views' cells, not one photo's splats
    # Behind the camera too: a photo's scene has nothing there.
    assert (scene.positions[:, 2] < 0).mean() > 0.3
    again = run_job(server, pixels, name="room.png", form={"panorama": "true"})
    assert again["cached"] and again["panorama"] is True


def test_the_xmp_tag_decides_when_the_field_is_absent(server: LiveServer) -> None:
    tagged = encode(equirect_room(128), "JPEG", xmp=gpano_xmp())
    job = run_job(server, tagged, name="tagged.jpg")
    assert job["panorama"] is True
    as_photo = run_job(server, tagged, name="tagged.jpg", form={"panorama": "false"})
    assert as_photo["panorama"] is False and not as_photo["cached"]
    plain = run_job(server, encode(equirect_room(128), "JPEG"), name="plain.jpg")
    assert plain["panorama"] is False


def test_a_photo_sent_as_a_panorama_is_refused(server: LiveServer) -> None:
    rng = np.random.default_rng(0)
    photo = encode(rng.integers(0, 255, (60, 80, 3), np.uint8))
    body = assert_error(
        post_job(server, photo, name="photo.png", form={"panorama": "true"}), 422, "not_a_panorama"
    )
    assert "80x60 (aspect 1.33:1)" in body["message"]
    files = {"file": ("photo.png", photo, "image/png")}
    synchronous = server.client.post("/v1/predict", files=files, data={"panorama": "true"})
    assert_error(synchronous, 422, "not_a_panorama")
    assert_error(
        post_job(server, photo, name="photo.png", form={"panorama": "maybe"}),
        422,
        "validation_error",
    )
    assert server.client.get("/v1/jobs").json()["total"] == 0
