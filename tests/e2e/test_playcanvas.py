"""Our .glb and SPZ version 4 rendered by the PlayCanvas engine (npm ``playcanvas``, used only
here, never shipped) in chromium: upright and not mirrored, checked as the viewer tests do.

The engine reads KHR_gaussian_splatting from a .glb itself (its container loader). It has
no SPZ reader: the .spz is decoded by Niantic's own library (the ``@adobe/spz`` WebAssembly
build, which splat-transform also depends on) into the engine's splat data, raw, without any
coordinate conversion. Both files are y up, so a PlayCanvas camera at the origin with no
rotation (looking down -Z) and the photo's field of view must see the photo: red above,
blue below, green on the left.
"""

from __future__ import annotations

import functools
import http.server
import io
import math
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlsharp import splat
from tests.e2e.pixels import centroid_column, centroid_row, dominant_mask
from tests.e2e.scenes import marker_scene
from tests.npmtools import NpmTools, npm_tools

__all__ = ["npm_tools"]

pytestmark = pytest.mark.slow

#: The test page: a PlayCanvas app with a camera at the origin, and `show(kind, url)`.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>body{margin:0} canvas{width:480px;height:360px}
</style></head><body><canvas id="c" width="480" height="360"></canvas>
<script type="module">
import * as pc from "./playcanvas.js";
import createSpzModule from "./spz.js";

const canvas = document.getElementById("c");
const app = new pc.Application(canvas, { graphicsDeviceOptions: { antialias: false } });
app.setCanvasFillMode(pc.FILLMODE_NONE);
app.setCanvasResolution(pc.RESOLUTION_FIXED, 480, 360);
app.start();
const camera = new pc.Entity("camera");
camera.addComponent("camera", {
  clearColor: new pc.Color(16 / 255, 18 / 255, 24 / 255),
  fov: VFOV,
  nearClip: 0.01,
  farClip: 1000,
});
app.root.addChild(camera); // at the origin, looking down -Z, +Y up
window.drawn = 0;
app.on("frameend", () => (window.drawn += 1));

function loadGlb(url) {
  return new Promise((resolve, reject) => {
    app.assets.loadFromUrl(url, "container", (error, asset) => {
      if (error) return reject(new Error(String(error)));
      const entity = asset.resource.instantiateRenderEntity();
      app.root.addChild(entity);
      resolve(asset.resource.gsplats.length);
    });
  });
}

async function loadSpz(url) {
  const spz = await createSpzModule({ print: () => {}, printErr: () => {} });
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const cloud = spz.loadSpzFromBuffer(bytes, { to: spz.CoordinateSystem.UNSPECIFIED });
  const n = cloud.numPoints;
  const column = (source, stride, index) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 1) out[i] = source[i * stride + index];
    return out;
  };
  // Niantic's cloud holds 3DGS values: log scales, opacity logits, SH DC colours,
  // quaternions (x, y, z, w); the engine's PLY-style data takes the same, w first.
  const properties = [
    ["x", column(cloud.positions, 3, 0)],
    ["y", column(cloud.positions, 3, 1)],
    ["z", column(cloud.positions, 3, 2)],
    ["rot_0", column(cloud.rotations, 4, 3)],
    ["rot_1", column(cloud.rotations, 4, 0)],
    ["rot_2", column(cloud.rotations, 4, 1)],
    ["rot_3", column(cloud.rotations, 4, 2)],
    ["scale_0", column(cloud.scales, 3, 0)],
    ["scale_1", column(cloud.scales, 3, 1)],
    ["scale_2", column(cloud.scales, 3, 2)],
    ["opacity", column(cloud.alphas, 1, 0)],
    ["f_dc_0", column(cloud.colors, 3, 0)],
    ["f_dc_1", column(cloud.colors, 3, 1)],
    ["f_dc_2", column(cloud.colors, 3, 2)],
  ].map(([name, storage]) => ({ type: "float", name, storage, byteSize: 4 }));
  const data = new pc.GSplatData([{ name: "vertex", count: n, properties }]);
  const entity = new pc.Entity("splats");
  entity.addComponent("gsplat", {});
  entity.gsplat.resource = new pc.GSplatResource(app.graphicsDevice, data);
  app.root.addChild(entity);
  return n;
}

window.show = (kind, url) => (kind === "glb" ? loadGlb(url) : loadSpz(url));
window.ready = true;
</script></body></html>
"""


@pytest.fixture()
def site(tmp_path: Path, npm_tools: NpmTools) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server of a folder with the page, the engine and Niantic's decoder."""
    modules = npm_tools.folder / "node_modules"
    shutil.copy(modules / "playcanvas" / "build" / "playcanvas.mjs", tmp_path / "playcanvas.js")
    shutil.copy(modules / "@adobe" / "spz" / "dist" / "spz.js", tmp_path / "spz.js")
    scene = marker_scene()
    height = scene.image_size[1]
    vfov = math.degrees(2 * math.atan(height / (2 * scene.focal_px)))
    (tmp_path / "index.html").write_text(PAGE.replace("VFOV", f"{vfov:.6f}"))
    splat.write(scene, tmp_path / "markers.glb", "glb")
    splat.write(scene, tmp_path / "markers.spz", "spz", version=4)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("kind", ["glb", "spz"])
def test_playcanvas_renders_our_file_upright(
    site: tuple[str, Path], open_page, artifacts: Path, kind: str
) -> None:
    url, _ = site
    run = open_page(f"{url}/index.html", viewport={"width": 480, "height": 360})
    page = run.page
    page.wait_for_function("() => window.ready === true")
    loaded = page.evaluate("([kind, file]) => window.show(kind, file)", [kind, f"markers.{kind}"])
    assert loaded == (1 if kind == "glb" else len(marker_scene()))
    # The engine draws every frame and sorts the splats in the background: look every few
    # frames until all three blobs are on the canvas (at most 60 looks).
    pixels = np.zeros((1, 1, 3), dtype=np.uint8)
    for _ in range(60):
        drawn = page.evaluate("window.drawn")
        page.wait_for_function("n => window.drawn >= n", arg=drawn + 5)
        png = page.locator("#c").screenshot()
        (artifacts / f"playcanvas-{kind}.png").write_bytes(png)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        if all(dominant_mask(pixels, c).sum() > 50 for c in (0, 1, 2)):
            break
    red, green, blue = (dominant_mask(pixels, channel) for channel in (0, 1, 2))
    assert red.sum() > 50 and green.sum() > 50 and blue.sum() > 50, "all three blobs drawn"
    assert centroid_row(red) < 0.5 < centroid_row(blue), "red is up, blue is down"
    assert centroid_column(green) < 0.5, "green is on the left"
    assert 0.35 < centroid_column(red) < 0.65, "red is in the middle"
    assert not run.errors
