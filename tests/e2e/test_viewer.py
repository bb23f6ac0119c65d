"""The 3D viewer in a real browser: orientation, mouse and keyboard controls, quality,
fullscreen and the first camera. Scenes are written with :mod:`mlsharp.splat` and served
through the page's ``?scene=`` parameter, or come from jobs of a real ``mlsharp serve``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mlsharp import splat
from tests.e2e.conftest import BACKGROUND
from tests.e2e.helpers import (
    camera,
    frames,
    photo_bytes,
    serve_scene,
    settle,
    wait_for_scene,
)
from tests.e2e.pixels import (
    border_matches,
    canvas_pixels,
    centroid_column,
    centroid_row,
    dominant_mask,
    non_background_fraction,
)
from tests.e2e.scenes import large_scene, marker_scene

#: The focus ring's colour (style.css: --focus).
FOCUS = (242, 169, 0)
pytestmark = pytest.mark.slow


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two screenshots (0-255)."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def animation_frames(page, count: int = 3) -> None:
    """Let the page run ``count`` animation frames (the viewer reads keys once per frame)."""
    page.evaluate(
        """n => new Promise((done) => {
            const step = () => (n-- > 0 ? requestAnimationFrame(step) : done());
            step();
        })""",
        count,
    )


def open_scene(open_page, server_url: str, scene: Path, fmt: str, query: str = "", **kwargs):
    """A page showing ``scene`` (written in format ``fmt``), settled."""
    page = open_page("about:blank", **kwargs).page
    serve_scene(page, scene)
    page.goto(f"{server_url}/?scene=/e2e-scenes/{scene.name}&format={fmt}{query}")
    wait_for_scene(page)
    return page


@pytest.mark.parametrize("fmt", ["ply", "spz", "splat", "ply-standard", "sog"])
def test_scenes_render_upright_and_not_mirrored(
    web_server, open_page, tmp_path, artifacts, fmt
) -> None:
    scene = tmp_path / f"markers{splat.SUFFIXES[fmt]}"
    splat.write(marker_scene(), scene, fmt)  # what the server writes for this format
    page = open_scene(open_page, web_server.url, scene, fmt)
    pixels = canvas_pixels(page, save_to=artifacts / f"orientation-{fmt}.png")
    red, blue, green = (dominant_mask(pixels, channel) for channel in (0, 2, 1))
    assert red.any() and blue.any() and green.any(), "all three blobs must be visible"
    assert centroid_row(red) < 0.5 < centroid_row(blue), "red is up, blue is down"
    assert centroid_column(green) < 0.5, "green is on the left"
    assert 0.35 < centroid_column(red) < 0.65, "red is in the middle"


def test_viewer_mouse_controls_quality_and_fullscreen(
    web_server, open_page, tmp_path, artifacts
) -> None:
    scene = tmp_path / "controls.ply"
    splat.write(large_scene(64, 48), scene, "ply")  # 6,144 splats: a wall and a noisy layer
    # light-budget lowers the level-of-detail threshold so this small scene uses it.
    page = open_scene(
        open_page,
        web_server.url,
        scene,
        "ply",
        "&light-budget=2000",
        viewport={"width": 480, "height": 480},
    )
    start = canvas_pixels(page, save_to=artifacts / "controls-start.png")
    # Orbit: a drag across the canvas turns the view around the scene.
    box = page.locator("#viewer canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    drawn = frames(page)
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 150, cy, steps=8)
    page.mouse.up()
    # The view keeps turning for a while (inertia): a frame after the drag is enough here.
    page.wait_for_function("n => window.mlsharp.viewer.stats.frames > n", arg=drawn)
    turned = canvas_pixels(page, save_to=artifacts / "controls-orbit.png")
    assert difference(turned, start) > 2
    # Reset view: back to the photo's viewpoint.
    drawn = frames(page)
    page.click("#reset")
    settle(page, drawn)
    assert difference(canvas_pixels(page), start) < 2
    # Fly: keys move the camera while the canvas has focus.
    page.click("[data-mode='fly']")
    assert page.get_attribute("[data-mode='fly']", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.tagName") == "CANVAS"
    drawn = frames(page)
    page.keyboard.down("KeyW")
    page.wait_for_function("() => window.mlsharp.viewer.camera.position.z < -0.3")
    page.keyboard.up("KeyW")
    settle(page, drawn)
    assert difference(canvas_pixels(page), start) > 2
    # Typing in a field never flies the camera, however many frames pass.
    z = page.evaluate("window.mlsharp.viewer.camera.position.z")
    page.focus("#focal")
    page.keyboard.down("KeyS")
    animation_frames(page, 5)
    page.keyboard.up("KeyS")
    assert page.evaluate("window.mlsharp.viewer.camera.position.z") == z

    # Light quality draws a level-of-detail subset within the budget; full draws all.
    stats = page.evaluate("window.mlsharp.viewer.stats")
    assert stats["splats"] == 6144 and stats["drawn"] == 6144 and not stats["lod"]
    page.select_option("#quality", "light")
    # Spark computes the level-of-detail subset in a worker after the sort has settled, so
    # the drawn count follows a little later (under load, after `settled`): wait for both.
    page.wait_for_function(
        "() => { const s = window.mlsharp.viewer.stats;"
        " return s.lod && s.settled && s.drawn < s.splats; }"
    )
    stats = page.evaluate("window.mlsharp.viewer.stats")
    assert stats["quality"] == "light" and 0 < stats["drawn"] <= 2000, stats
    pixels = canvas_pixels(page, save_to=artifacts / "controls-light.png")
    assert non_background_fraction(pixels, BACKGROUND) > 0.3
    page.select_option("#quality", "full")
    page.wait_for_function(
        "() => { const s = window.mlsharp.viewer.stats; return !s.lod && s.settled; }"
    )
    assert page.evaluate("window.mlsharp.viewer.stats.drawn") == 6144

    # Fullscreen: the button says what it will do next.
    assert page.inner_text("#fullscreen") == "Fullscreen"
    page.click("#fullscreen")
    page.wait_for_function("() => document.fullscreenElement?.id === 'viewer-section'")
    page.wait_for_function(
        "() => document.querySelector('#fullscreen').textContent === 'Exit fullscreen'"
    )
    page.click("#fullscreen")
    page.wait_for_function("() => document.fullscreenElement === null")
    # The label follows the fullscreenchange event, which may come after the state flips.
    page.wait_for_function(
        "() => document.querySelector('#fullscreen').textContent === 'Fullscreen'"
    )


def test_viewer_is_usable_with_the_keyboard_alone(
    web_server, open_page, tmp_path, artifacts
) -> None:
    scene = tmp_path / "keys.spz"
    splat.write(large_scene(64, 48), scene, "spz")
    page = open_scene(
        open_page, web_server.url, scene, "spz", viewport={"width": 480, "height": 600}
    )
    # Tab reaches the canvas (just before the viewer's tools), which is named and ringed.
    page.focus("[data-mode='orbit']")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.tagName") == "CANVAS"
    scroll = page.evaluate("window.scrollY")
    canvas = page.locator("#viewer canvas")
    assert canvas.get_attribute("aria-label") == "3D scene viewer"
    assert canvas.get_attribute("role") == "application"
    assert canvas.get_attribute("aria-describedby") == "controls-help"
    assert "arrow keys turn" in page.inner_text("#controls-help")
    start = canvas_pixels(page, save_to=artifacts / "keyboard-focus.png")
    assert border_matches(start, FOCUS) > 0.6, "the focus ring is drawn on the canvas"
    home = camera(page)

    def press(key: str) -> dict:
        drawn = frames(page)
        page.keyboard.press(key)
        settle(page, drawn)
        return camera(page)

    # Orbit: arrow keys turn around the scene, + and - zoom, Shift + arrows move, Home resets.
    turned = press("ArrowLeft")
    assert not np.allclose(turned["quaternion"], home["quaternion"], atol=1e-3)
    assert difference(canvas_pixels(page), start) > 2
    up = press("ArrowUp")
    assert not np.allclose(up["quaternion"], turned["quaternion"], atol=1e-3)
    assert np.allclose(press("Home")["position"], home["position"], atol=1e-6)
    assert difference(canvas_pixels(page), start) < 2
    closer = press("+")
    assert closer["position"][2] < -0.05 and np.allclose(closer["quaternion"], home["quaternion"])
    farther = press("-")
    assert farther["position"][2] > closer["position"][2]
    press("Home")
    moved = press("Shift+ArrowUp")
    assert np.allclose(moved["quaternion"], home["quaternion"], atol=1e-6), "moving, not turning"
    assert abs(moved["position"][1] - home["position"][1]) > 1e-3
    press("Home")
    assert page.evaluate("window.scrollY") == scroll, "the keys do not scroll the page"

    # Fly mode from the keyboard: the mode button hands the focus back to the canvas.
    page.focus("[data-mode='fly']")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.tagName") == "CANVAS"
    start_fly = camera(page)
    page.keyboard.down("ArrowLeft")  # look left
    page.wait_for_function(
        "q => Math.abs(window.mlsharp.viewer.camera.quaternion.y - q) > 0.02",
        arg=start_fly["quaternion"][1],
    )
    page.keyboard.up("ArrowLeft")
    assert np.allclose(camera(page)["position"], start_fly["position"]), "looking, not moving"
    press("Home")
    page.keyboard.down("KeyW")
    page.wait_for_function("() => window.mlsharp.viewer.camera.position.z < -0.2")
    page.keyboard.up("KeyW")
    before = camera(page)["position"][2]
    assert press("+")["position"][2] < before, "+ steps forward in fly mode"
    assert page.evaluate("window.scrollY") == scroll


def test_fullscreen_button_is_hidden_where_fullscreen_is_unavailable(web_server, open_page) -> None:
    # As on iPhone Safari, which has no element fullscreen.
    no_fullscreen = (
        "Object.defineProperty(Document.prototype, 'fullscreenEnabled', { get: () => false });"
    )
    page = open_page(web_server.url, init_script=no_fullscreen).page
    page.wait_for_selector("#fullscreen", state="hidden")
    assert page.is_visible("#reset")


def test_job_without_ply_opens_with_its_focal_length_and_aspect(web_server, open_page) -> None:
    path = web_server.log_path.parent / "wide.jpg"
    path.write_bytes(photo_bytes(seed=4, size=(96, 48)))  # 2:1, no EXIF
    job_id = web_server.submit_photo(path, formats="spz", focal_mm="50")
    page = open_page(f"{web_server.url}/?job={job_id}").page
    wait_for_scene(page)
    photo = page.evaluate("window.mlsharp.viewer.stats.photo")
    # The page has no .ply to read the intrinsics from: the job's focal length and its
    # thumbnail's aspect (the photo's) give the same field of view the server used.
    focal_px = 50 * math.hypot(96, 48) / math.hypot(36, 24)
    expected = math.degrees(2 * math.atan(48 / (2 * focal_px)))
    assert photo["aspect"] == pytest.approx(2.0, rel=0.01)
    assert photo["vfov"] == pytest.approx(expected, abs=0.2)
