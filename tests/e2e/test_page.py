"""The web page in a real browser against a real ``mlsharp serve`` (tiny model).

Headless chromium with software WebGL (SwiftShader) renders the splats for real, so the
screenshots show what a user would see (the tiny model is untrained: its scene is the
photo's colours at noisy depths, which from the photo's viewpoint looks like the photo).
The viewer's own controls are in ``test_viewer.py``, error paths in ``test_errors.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import PARITY
from tests.e2e.conftest import API_KEY, BACKGROUND
from tests.e2e.helpers import photo_bytes, record_attribute, record_text, wait_for_scene
from tests.e2e.pixels import canvas_pixels, centroid_row, non_background_fraction

PHOTO = PARITY / "images" / "astronaut.jpg"
#: The stages a job goes through, in order (service/jobs.py).
STAGES = ["queued", "decode", "preprocess", "inference", "postprocess", "write", "done"]
pytestmark = pytest.mark.slow


def test_upload_a_photo_and_see_it_in_3d(web_server, open_page, artifacts: Path) -> None:
    run = open_page(web_server.url)
    page = run.page
    assert page.inner_text("h1") == "MLSharp 3D Maker"
    assert page.is_disabled("#submit")
    page.set_input_files("#file", str(PHOTO))
    page.wait_for_selector("#preview:not([hidden])")
    assert "astronaut.jpg" in page.inner_text("#file-name")
    # The page asks for the smallest format its viewer reads (sog) beside the default ply.
    checked = page.eval_on_selector_all(
        "#format-list input:checked", "els => els.map(e => e.value)"
    )
    assert checked == ["ply", "sog"]
    record_attribute(page, "#progress", "data-stage", "stages")
    page.click("#submit")
    wait_for_scene(page)

    assert page.inner_text("#stage") == "Done — 100%"
    assert page.get_attribute("#progress", "data-stage") == "done"
    # The progress followed the job live: the stages shown came in the pipeline's order and
    # several came before the end (events are coalesced, so a quick stage may be skipped).
    recorded = page.evaluate("window.stages")
    shown = [stage for i, stage in enumerate(recorded) if i == 0 or stage != recorded[i - 1]]
    assert shown == sorted(shown, key=STAGES.index), shown
    assert shown[-1] == "done" and len(shown) >= 4, shown
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)
    job = httpx.get(f"{web_server.url}/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["formats"] == ["ply", "sog"]
    # The viewer loaded the smallest file (the .sog), and each button says its file's size.
    assert job["sizes"]["sog"] < job["sizes"]["ply"]
    assert page.evaluate("window.mlsharp.viewer.stats.format") == "sog"
    buttons = page.eval_on_selector_all(
        "#download-list a", "els => els.map(e => [e.dataset.format, e.getAttribute('href')])"
    )
    # One button per result except the history thumbnail.
    results = {k: v for k, v in job["links"]["results"].items() if k != "preview"}
    assert "preview" in job["links"]["results"] and dict(buttons) == results
    assert "131,072 splats" in page.inner_text("#status")

    page.screenshot(path=str(artifacts / "upload-page.png"), full_page=True)
    pixels = canvas_pixels(page, save_to=artifacts / "upload-astronaut.png")
    assert non_background_fraction(pixels, BACKGROUND) > 0.3
    # From the photo's viewpoint the scene looks like the photo: the orange suit fills the
    # lower middle of the astronaut picture.
    orange = (pixels[..., 0] > 150) & (pixels[..., 2] < 110)
    assert centroid_row(orange) > 0.5
    stats = page.evaluate("window.mlsharp.viewer.stats")
    assert stats["splats"] == 131072 and stats["firstFrameMs"] > 0
    (artifacts / "upload-astronaut.json").write_text(
        json.dumps({**stats, "stages": shown}, indent=1)
    )


def test_detail_control_asks_for_fewer_splats(web_server, open_page) -> None:
    # The Detail presets send max_splats; the job, the viewer and the downloads show the
    # thinned scene, each download with its size.
    path = Path(web_server.log_path.parent / "detail.jpg")
    path.write_bytes(photo_bytes(seed=3))
    page = open_page(web_server.url).page
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#preview:not([hidden])")
    assert page.inner_text("#detail option[value='100000']") == "100,000 splats"
    page.select_option("#detail", "100000")
    page.click("#submit")
    wait_for_scene(page)
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)
    job = httpx.get(f"{web_server.url}/v1/jobs/{job_id}").json()
    assert job["max_splats"] == 100_000 and job["splats"] == 100_000
    assert page.evaluate("window.mlsharp.viewer.stats.splats") == 100_000
    assert page.inner_text("#download-count") == "100,000 splats"
    labels = page.eval_on_selector_all("#download-list a", "els => els.map(e => e.textContent)")
    assert labels and all(re.fullmatch(r"Download \S+ \(\d+(\.\d)? [KMG]?B\)", t) for t in labels)


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
    record_text(page, "#status", "statuses")
    item.get_by_role("button").click()
    wait_for_scene(page)
    assert f"job={job_id}" in page.url
    assert non_background_fraction(canvas_pixels(page), BACKGROUND) > 0.3
    assert not page.is_hidden("#downloads")
    # The 7 MB .ply arrives in many chunks; the status line (a live region) says so in
    # steps of 10 %, not once per chunk.
    downloading = [t for t in page.evaluate("window.statuses") if "Downloading" in t]
    percents = [int(m) for t in downloading for m in re.findall(r"(\d+)%", t)]
    assert percents and percents[-1] >= 90, downloading
    assert all(p % 10 == 0 for p in percents) and len(downloading) <= 12, downloading


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
    # The list may first show the job still running; it is fetched again once it is done.
    page.wait_for_function(
        "() => document.querySelector('#history-list .badge')?.textContent === '完成'"
    )

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
    # Switching the language re-words the error in place; it does not grab the focus.
    page.focus("#focal")
    page.select_option("#lang", "zh-CN")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('密钥')")
    assert page.evaluate("document.activeElement.id") != "key-input"
    page.select_option("#lang", "en")

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


def test_keyboard_paste_drop_and_phone_layout(web_server, open_page) -> None:
    # A job with a long, unbreakable name in the history must not widen the page either.
    long_name = "a-photo-with-a-very-long-file-name-that-has-no-spaces-anywhere-0123456789.jpg"
    path = web_server.log_path.parent / long_name
    path.write_bytes(photo_bytes(seed=3))
    web_server.submit_photo(path)
    page = open_page(web_server.url, viewport={"width": 360, "height": 740}).page
    # Measure once /v1/info (the format boxes) and the history have filled the page.
    page.wait_for_selector("#formats:not([hidden])")
    page.wait_for_selector("#history-list[aria-busy='false'] li")
    assert long_name in page.inner_text("#history-list")

    def overflow() -> int:
        return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    assert overflow() <= 0, "no sideways scrolling on a 360 px screen"
    assert page.get_attribute("#drop", "role") == "button"
    assert page.get_attribute("#drop", "tabindex") == "0"
    # The drop zone is a button: Enter opens the file picker when pressed (once, however
    # long it is held), Space when released. Counted at the page's call to the file
    # input's click(), which is what opens the browser's picker.
    page.evaluate(
        """() => { window.pickerOpened = 0;
                   document.querySelector('#file').addEventListener('click',
                     () => window.pickerOpened++); }"""
    )

    def opened() -> int:
        return page.evaluate("window.pickerOpened")

    page.focus("#drop")
    scroll = page.evaluate("window.scrollY")
    page.keyboard.down("Enter")
    assert opened() == 1
    page.keyboard.down("Enter")  # auto-repeat while held
    page.keyboard.up("Enter")
    assert opened() == 1
    page.keyboard.down(" ")
    assert opened() == 1, "Space opens the picker on release, not on press"
    page.keyboard.up(" ")
    assert opened() == 2
    assert page.evaluate("window.scrollY") == scroll, "Space on the drop zone does not scroll"
    page.set_input_files("#file", str(PHOTO))
    page.wait_for_selector("#preview:not([hidden])")
    assert "astronaut.jpg" in page.inner_text("#file-name")
    assert overflow() <= 0
    # Paste an image from the clipboard, drop one on the drop zone, then one beside it.
    record_attribute(page, "#preview", "src", "previews")
    for event, target, name in (
        ("paste", "document", "pasted-photo.png"),
        ("drop", "#drop", "dropped-photo.png"),
        ("drop", "footer", "dropped-elsewhere.png"),
    ):
        page.evaluate(
            """([event, target, name]) => {
                const canvas = document.createElement('canvas');
                canvas.width = 8; canvas.height = 6;
                return new Promise((done) => canvas.toBlob((blob) => {
                  const data = new DataTransfer();
                  data.items.add(new File([blob], name, { type: 'image/png' }));
                  const element = target === 'document' ? document
                    : document.querySelector(target);
                  const init = { bubbles: true, cancelable: true };
                  element.dispatchEvent(event === 'paste'
                    ? new ClipboardEvent('paste', { ...init, clipboardData: data })
                    : new DragEvent('drop', { ...init, dataTransfer: data }));
                  done();
                }, 'image/png'));
            }""",
            [event, target, name],
        )
        page.wait_for_function(
            "name => document.querySelector('#file-name').textContent.includes(name)", arg=name
        )
        page.wait_for_selector("#preview:not([hidden])")
    # One preview per file: a drop on the zone is not handled again by the page's listener.
    assert len(page.evaluate("window.previews")) == 3, page.evaluate("window.previews")
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#progress-box", "aria-live") == "polite"
    assert page.locator("label[for='focal']").count() == 1
    assert page.get_attribute("#lang option[value='zh-CN']", "lang") == "zh-CN"
    assert page.locator("[role='toolbar']").count() == 0  # no toolbar without arrow keys
