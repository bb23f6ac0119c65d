"""A 360° panorama on the page: detected by its shape, sent as one, followed view by view,
and opened from the inside (real server with the tiny model, real chromium)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.helpers import camera, photo_bytes, record_attribute, record_text, wait_for_scene
from tests.e2e.pixels import canvas_pixels
from tests.panorama.room import encode, equirect_room

pytestmark = pytest.mark.slow


def test_a_panorama_is_detected_sent_and_opened_from_the_centre(
    web_server, open_page, tmp_path: Path, artifacts: Path
) -> None:
    page = open_page(web_server.url).page
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes(41))  # 96x72: an ordinary photo
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    assert not page.is_checked("#panorama")

    pano = tmp_path / "room.png"
    pano.write_bytes(encode(equirect_room(512)))  # 2:1, no XMP: the page's guess decides
    page.set_input_files("#file", str(pano))
    page.wait_for_function("() => document.querySelector('#panorama').checked")
    record_attribute(page, "#progress", "data-stage", "stages")
    record_text(page, "#stage", "labels")
    page.click("#submit")
    page.wait_for_selector("#progress[data-stage='done']", timeout=600_000)
    wait_for_scene(page)

    stages = page.evaluate("window.stages")
    views = sorted({s for s in stages if s and s.startswith("view ")})
    assert views and all(re.fullmatch(r"view [1-6]/6", s) for s in views), stages
    labels = page.evaluate("window.labels")
    assert any(re.match(r"Running the network on view [1-6] of 6 — \d+%", x) for x in labels)
    found = re.search(r"job=([\w-]+)", page.url)
    assert found is not None, page.url
    job_id = found.group(1)
    job = httpx.get(f"{web_server.url}/v1/jobs/{job_id}").json()
    assert job["panorama"] is True and job["status"] == "succeeded"

    # Opened at the centre, looking forward (+z of the scene is -z of three.js), in fly
    # mode so that dragging looks around in place.
    assert page.get_attribute("#viewer", "data-panorama") == "true"
    stats = page.evaluate("window.mlsharp.viewer.stats")
    assert stats["mode"] == "fly"
    assert page.get_attribute("[data-mode='fly']", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.tagName") != "CANVAS"  # focus not moved
    pose = camera(page)
    np.testing.assert_allclose(pose["position"], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(pose["quaternion"], [0, 0, 0, 1], atol=1e-9)
    assert "around you" in page.inner_text("#status")
    # Forward is the room's red front wall.
    pixels = canvas_pixels(page, save_to=artifacts / "panorama-front.png").astype(np.float64)
    height, width = pixels.shape[:2]
    centre = pixels[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3].reshape(-1, 3)
    red, green, blue = centre.mean(axis=0)
    assert red > 1.5 * green and red > 1.5 * blue, (red, green, blue)
