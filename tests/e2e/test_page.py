"""The web page in a real browser against a real ``mlsharp serve`` (tiny model).

Headless chromium with software WebGL (SwiftShader) renders the splats for real, so the
screenshots show what a user would see (the tiny model is untrained: its scene is the
photo's colours at noisy depths, which from the photo's viewpoint looks like the photo).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from mlsharp import splat
from tests.conftest import PARITY
from tests.e2e.conftest import API_KEY, BACKGROUND
from tests.e2e.pixels import canvas_pixels, centroid_row, dominant_mask, non_background_fraction
from tests.e2e.scenes import large_scene, up_down_scene

PHOTO = PARITY / "images" / "astronaut.jpg"
pytestmark = pytest.mark.slow


def photo_bytes(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small real JPEG with a gradient; each seed differs (no cache hits between tests)."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size[0], dtype=np.float64)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def serve_scene(page, scene: Path) -> None:
    """Answer the page's requests for /e2e-scenes/NAME with the file ``scene`` (same origin,
    so the page's Content-Security-Policy applies as for any result file)."""
    page.route(
        lambda url: urlsplit(url).path.startswith("/e2e-scenes/"),
        lambda route: route.fulfill(
            body=scene.read_bytes(), content_type="application/octet-stream"
        ),
    )


def wait_for_scene(page) -> None:
    """Wait until the viewer has drawn its first frame of a loaded scene."""
    page.wait_for_selector("#viewer[data-ready='true']", timeout=90_000)


def test_upload_a_photo_and_see_it_in_3d(web_server, open_page, artifacts: Path) -> None:
    run = open_page(web_server.url)
    page = run.page
    assert page.inner_text("h1") == "MLSharp 3D Maker"
    assert page.is_disabled("#submit")
    page.set_input_files("#file", str(PHOTO))
    page.wait_for_selector("#preview:not([hidden])")
    assert "astronaut.jpg" in page.inner_text("#file-name")
    # The server offers spz: the page asks for it beside the default ply, for the viewer.
    checked = page.eval_on_selector_all(
        "#format-list input:checked", "els => els.map(e => e.value)"
    )
    assert checked == ["ply", "spz"]
    page.click("#submit")
    wait_for_scene(page)

    assert page.inner_text("#stage") == "Done — 100%"
    assert page.get_attribute("#progress", "data-stage") == "done"
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)
    job = httpx.get(f"{web_server.url}/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["formats"] == ["ply", "spz"]
    buttons = page.eval_on_selector_all(
        "#download-list a", "els => els.map(e => [e.dataset.format, e.getAttribute('href')])"
    )
    # One button per result except the history thumbnail.
    results = {k: v for k, v in job["links"]["results"].items() if k != "preview"}
    assert "preview" in job["links"]["results"] and dict(buttons) == results
    assert "131,072 splats" in page.inner_text("#status")

    pixels = canvas_pixels(page, save_to=artifacts / "upload-astronaut.png")
    assert non_background_fraction(pixels, BACKGROUND) > 0.3
    # From the photo's viewpoint the scene looks like the photo: the orange suit fills the
    # lower middle of the astronaut picture.
    orange = (pixels[..., 0] > 150) & (pixels[..., 2] < 110)
    assert centroid_row(orange) > 0.5
    stats = page.evaluate("window.mlsharp.viewer.stats")
    assert stats["splats"] == 131072 and stats["firstFrameMs"] > 0
    (artifacts / "upload-astronaut.json").write_text(json.dumps(stats, indent=1))


def test_reopen_a_job_from_the_history(web_server, open_page) -> None:
    path = Path(web_server.log_path.parent / "history.jpg")
    path.write_bytes(photo_bytes(seed=1))
    job_id = web_server.submit_photo(path)
    page = open_page(web_server.url).page
    item = page.locator(f"#history-list li[data-job='{job_id}']")
    item.wait_for()
    assert "history.jpg" in item.inner_text() and "done" in item.inner_text()
    thumb = item.locator("img.thumb")  # the job's preview result, fetched as a blob
    assert thumb.get_attribute("alt") == "Preview of history.jpg"
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    item.get_by_role("button").click()
    wait_for_scene(page)
    assert f"job={job_id}" in page.url
    assert non_background_fraction(canvas_pixels(page), BACKGROUND) > 0.3
    assert not page.is_hidden("#downloads")


def test_language_defaults_to_the_browser_and_can_be_switched(web_server, open_page) -> None:
    path = Path(web_server.log_path.parent / "language.jpg")
    path.write_bytes(photo_bytes(seed=2))
    job_id = web_server.submit_photo(path)
    page = open_page(f"{web_server.url}/?job={job_id}", locale="zh-CN").page
    assert page.inner_text("h1") == "MLSharp 3D 生成器"
    assert page.inner_text("#submit") == "生成 3D"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.wait_for_function("() => document.querySelector('#stage').textContent.includes('100%')")
    assert page.inner_text("#stage") == "完成 — 100%"
    page.locator("#history-list .badge").first.wait_for()
    assert page.locator("#history-list .badge").first.inner_text() == "完成"

    page.select_option("#lang", "en")
    assert page.inner_text("h1") == "MLSharp 3D Maker"
    assert page.inner_text("#stage") == "Done — 100%"
    assert page.locator("#history-list .badge").first.inner_text() == "done"
    page.reload()
    assert page.inner_text("h1") == "MLSharp 3D Maker"  # the choice is remembered
    assert page.input_value("#lang") == "en"


def test_a_text_file_shows_the_servers_message(web_server, open_page) -> None:
    content = b"this is not a photo\n"
    expected = httpx.post(
        f"{web_server.url}/v1/jobs", files={"file": ("notes.txt", content, "text/plain")}
    ).json()
    assert expected["error"] == "invalid_image"
    page = open_page(web_server.url).page
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": content}]
    )
    page.click("#submit")
    error = page.locator("#error")
    error.wait_for()
    assert error.get_attribute("role") == "alert"
    assert error.get_attribute("data-code") == "invalid_image"
    text = error.inner_text()
    assert "This file is not a photo the server can read." in text
    assert expected["message"] in text
    assert page.is_enabled("#submit")  # the user can pick another file and retry


def test_network_failure_is_explained(web_server, open_page) -> None:
    page = open_page(web_server.url).page
    page.route("**/v1/jobs", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(PHOTO))
    page.click("#submit")
    page.locator("#error").wait_for()
    assert page.get_attribute("#error", "data-code") == "network"
    assert "Cannot reach the server" in page.inner_text("#error")


def test_api_key_is_asked_for_remembered_and_used(keyed_server, open_page, tmp_path) -> None:
    page = open_page(keyed_server.url).page
    page.locator("#key-panel").wait_for()  # /v1/info says a key is needed
    page.set_input_files("#file", str(PHOTO))
    page.click("#submit")
    page.locator("#error[data-code='unauthorized']").wait_for()
    assert "needs an API key" in page.inner_text("#error")
    assert page.evaluate("document.activeElement.id") == "key-input"

    page.fill("#key-input", "not-the-key")
    page.press("#key-input", "Enter")
    page.click("#submit")
    page.locator("#error[data-code='forbidden']").wait_for()
    assert "The API key was refused" in page.inner_text("#error")

    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type='submit']")
    page.click("#submit")
    wait_for_scene(page)
    assert non_background_fraction(canvas_pixels(page), BACKGROUND) > 0.3
    page.reload()  # the key is remembered: the job reopens from the URL with it
    page.locator("#history-list li").first.wait_for()
    thumb = page.locator("#history-list li img.thumb").first  # fetched with the key
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    page.locator("#download-list a[data-format='ply']").wait_for()
    with page.expect_download() as download_info:
        page.click("#download-list a[data-format='ply']")
    saved = tmp_path / "download.ply"
    download_info.value.save_as(saved)
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)
    direct = httpx.get(
        f"{keyed_server.url}/v1/jobs/{job_id}/result?format=ply", headers=keyed_server.headers
    )
    assert saved.read_bytes() == direct.content
    assert download_info.value.suggested_filename == "astronaut.ply"


@pytest.mark.parametrize("fmt", ["ply", "spz", "splat", "ply-standard"])
def test_scenes_render_upright(web_server, open_page, tmp_path, artifacts, fmt) -> None:
    scene = tmp_path / f"updown{splat.SUFFIXES[fmt]}"
    splat.write(up_down_scene(), scene, fmt)  # what the server writes for this format
    run = open_page("about:blank")
    page = run.page
    serve_scene(page, scene)
    page.goto(f"{web_server.url}/?scene=/e2e-scenes/{scene.name}&format={fmt}")
    wait_for_scene(page)
    pixels = canvas_pixels(page, save_to=artifacts / f"orientation-{fmt}.png")
    red = centroid_row(dominant_mask(pixels, 0))
    blue = centroid_row(dominant_mask(pixels, 2))
    assert red is not None and blue is not None, "both blobs must be visible"
    assert red < 0.5 < blue, f"red (up) at {red:.2f}, blue (down) at {blue:.2f} of the height"


def test_viewer_controls(web_server, open_page, tmp_path, artifacts) -> None:
    scene = tmp_path / "controls.ply"
    splat.write(large_scene(64, 48), scene, "ply")  # a textured wall and a noisy layer
    page = open_page("about:blank", viewport={"width": 480, "height": 480}).page
    serve_scene(page, scene)
    page.goto(f"{web_server.url}/?scene=/e2e-scenes/controls.ply")
    wait_for_scene(page)
    start = canvas_pixels(page, save_to=artifacts / "controls-start.png")
    # Orbit: drag across the canvas turns the view around the scene.
    box = page.locator("#viewer canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 150, cy, steps=8)
    page.mouse.up()
    frames = page.evaluate("window.mlsharp.viewer.stats.frames")
    page.wait_for_function("n => window.mlsharp.viewer.stats.frames > n", arg=frames)
    page.wait_for_timeout(500)
    turned = canvas_pixels(page, save_to=artifacts / "controls-orbit.png")
    assert np.abs(turned.astype(int) - start.astype(int)).mean() > 2
    # Reset view: back to the photo's viewpoint.
    page.click("#reset")
    page.wait_for_timeout(800)
    assert np.abs(canvas_pixels(page).astype(int) - start.astype(int)).mean() < 2
    # Fly: keys move the camera while the canvas has focus.
    page.click("[data-mode='fly']")
    assert page.get_attribute("[data-mode='fly']", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.tagName") == "CANVAS"
    page.keyboard.down("KeyW")
    page.wait_for_function("() => window.mlsharp.viewer.camera.position.z < -0.3")
    page.keyboard.up("KeyW")
    page.wait_for_timeout(500)
    flown = canvas_pixels(page)
    assert np.abs(flown.astype(int) - start.astype(int)).mean() > 2
    # Typing in a field never flies the camera.
    z = page.evaluate("window.mlsharp.viewer.camera.position.z")
    page.focus("#focal")
    page.keyboard.press("KeyS")
    page.keyboard.down("KeyS")
    page.wait_for_timeout(400)
    page.keyboard.up("KeyS")
    assert page.evaluate("window.mlsharp.viewer.camera.position.z") == z
    # Quality toggle and fullscreen.
    page.select_option("#quality", "light")
    page.wait_for_function("() => window.mlsharp.viewer.stats.quality === 'light'")
    page.click("#fullscreen")
    page.wait_for_function("() => document.fullscreenElement?.id === 'viewer-section'")


def open_file_chooser_by_keyboard(page: Any) -> Any:
    """Focus the drop zone and open the file picker with Enter (or Space).

    Under a loaded CI machine chromium has once dropped the first key press's file
    chooser (a 90 s timeout, not reproducible alone); both keys are supported by the page,
    so a second attempt with Space still tests keyboard access.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for key in ("Enter", "Space"):
        page.focus("#drop")
        page.wait_for_function("document.activeElement?.id === 'drop'")
        try:
            with page.expect_file_chooser(timeout=15_000) as chooser:
                page.keyboard.press(key)
            return chooser.value
        except PlaywrightTimeout:
            continue
    raise AssertionError("neither Enter nor Space on the drop zone opened the file picker")


def test_keyboard_paste_drop_and_phone_layout(web_server, open_page) -> None:
    page = open_page(web_server.url, viewport={"width": 390, "height": 740}).page
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "no sideways scrolling on a phone-sized screen"
    assert page.get_attribute("#drop", "role") == "button"
    assert page.get_attribute("#drop", "tabindex") == "0"
    chooser = open_file_chooser_by_keyboard(page)
    chooser.set_files(str(PHOTO))
    page.wait_for_selector("#preview:not([hidden])")
    assert "astronaut.jpg" in page.inner_text("#file-name")
    # Paste an image from the clipboard, then drop one on the drop zone.
    for event, name in (("paste", "pasted-photo.png"), ("drop", "dropped-photo.png")):
        page.evaluate(
            """([event, name]) => {
                const canvas = document.createElement('canvas');
                canvas.width = 8; canvas.height = 6;
                return new Promise((done) => canvas.toBlob((blob) => {
                  const data = new DataTransfer();
                  data.items.add(new File([blob], name, { type: 'image/png' }));
                  const target = event === 'paste' ? document : document.querySelector('#drop');
                  const init = { bubbles: true, cancelable: true };
                  target.dispatchEvent(event === 'paste'
                    ? new ClipboardEvent('paste', { ...init, clipboardData: data })
                    : new DragEvent('drop', { ...init, dataTransfer: data }));
                  done();
                }, 'image/png'));
            }""",
            [event, name],
        )
        page.wait_for_function(
            "name => document.querySelector('#file-name').textContent.includes(name)", arg=name
        )
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#progress-box", "aria-live") == "polite"
    assert page.locator("label[for='focal']").count() == 1
