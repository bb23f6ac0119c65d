"""Helpers of the browser tests: test photos, scene files, and waiting for the viewer."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image


def photo_bytes(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small real JPEG with a gradient; each seed differs (no cache hits between tests)."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size[0], dtype=np.float64)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def serve_scene(page: Any, scene: Path) -> None:
    """Answer the page's requests for /e2e-scenes/NAME with the file ``scene`` (same origin,
    so the page's Content-Security-Policy applies as for any result file)."""
    page.route(
        lambda url: urlsplit(url).path.startswith("/e2e-scenes/"),
        lambda route: route.fulfill(
            body=scene.read_bytes(), content_type="application/octet-stream"
        ),
    )


def wait_for_scene(page: Any) -> None:
    """Wait until the viewer has drawn its first frame of a loaded scene, and settled."""
    page.wait_for_selector("#viewer[data-ready='true']", timeout=90_000)
    page.wait_for_function("() => window.mlsharp.viewer.stats.settled")


def frames(page: Any) -> int:
    """Frames the viewer has drawn so far."""
    return page.evaluate("window.mlsharp.viewer.stats.frames")


def settle(page: Any, after: int) -> None:
    """Wait until the viewer drew a frame since it had drawn ``after``, and has settled:
    the camera stopped (orbit inertia included) and Spark has no sort pending, so the
    canvas shows the final frame for the current view."""
    page.wait_for_function(
        "n => { const s = window.mlsharp.viewer.stats; return s.frames > n && s.settled; }",
        arg=after,
    )


def camera(page: Any) -> dict[str, list[float]]:
    """The viewer camera's position and quaternion."""
    return page.evaluate(
        """() => {
            const { position, quaternion } = window.mlsharp.viewer.camera;
            return { position: position.toArray(), quaternion: quaternion.toArray() };
        }"""
    )


def record_attribute(page: Any, selector: str, attribute: str, name: str) -> None:
    """Record every value ``attribute`` of ``selector`` takes, in ``window[name]``.

    Each change is recorded, also several in one task: observers get them in one batch,
    where a record carries the value before its change, the next one the value after.
    """
    page.evaluate(
        """([selector, attribute, name]) => {
            const target = document.querySelector(selector);
            window[name] = [];
            new MutationObserver((records) => records.forEach((record, i) => {
              const next = records[i + 1];
              window[name].push(next ? next.oldValue : target.getAttribute(attribute));
            })).observe(target, {
              attributes: true, attributeFilter: [attribute], attributeOldValue: true,
            });
        }""",
        [selector, attribute, name],
    )


def record_text(page: Any, selector: str, name: str) -> None:
    """Record every text set on ``selector`` (``textContent = ...``), in ``window[name]``."""
    page.evaluate(
        """([selector, name]) => {
            const target = document.querySelector(selector);
            window[name] = [];
            new MutationObserver((records) => {
              for (const record of records) {
                if (record.addedNodes.length) {
                  window[name].push([...record.addedNodes].map((n) => n.textContent).join(''));
                }
              }
            }).observe(target, { childList: true });
        }""",
        [selector, name],
    )
