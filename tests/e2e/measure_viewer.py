"""Measure the viewer in headless chromium: first-frame time and frame rate of a large scene.

Run: ``.venv/bin/python -m tests.e2e.measure_viewer [--splats-side 768] [--frames 3]``

Writes a synthetic SHARP-sized scene (768 x 768 x 2 = 1.18 M splats) with
:mod:`mlsharp.splat` as ``.ply`` and ``.spz``, serves the real page from an API-only
``create_app`` (no model) and feeds the scene through ``?scene=``. Prints one row per
format and quality: download size, splats drawn (the level-of-detail subset in light
quality), first-frame time, and frames per second while the camera turns (each frame
re-sorts and re-draws the splats), timed once the viewer has settled. Under SwiftShader
(software WebGL on the CPU) the figures say more about the CPU than about a GPU; on a
real GPU run it with ``--gpu`` (drops the SwiftShader flags).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from mlsharp import splat
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.scenes import large_scene
from tests.service.conftest import free_port


def serve_page(data_dir: Path) -> tuple[str, object]:
    """The app without a model on a free port (only the page and /v1/info are needed)."""
    import uvicorn

    from mlsharp.config import Settings
    from mlsharp.service.app import create_app

    app = create_app(Settings(workers=0, data_dir=str(data_dir), offline=True))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def fulfil_with(body: bytes):
    """A Playwright route handler answering with ``body``."""
    return lambda route: route.fulfill(body=body)


def measure(browser, url: str, fmt: str, path: Path, quality: str, args) -> str:
    """One table row: ``path`` shown in ``quality`` on a fresh page, then timed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": args.width, "height": args.height})
    context.add_init_script(f"localStorage.setItem('mlsharp.quality', '{quality}')")
    page = context.new_page()
    page.set_default_timeout(600_000)
    page.route(
        lambda u: urlsplit(u).path.startswith("/e2e-scenes/"), fulfil_with(path.read_bytes())
    )
    budget = f"&light-budget={args.light_budget}" if args.light_budget else ""
    page.goto(f"{url}/?scene=/e2e-scenes/{path.name}&format={fmt}{budget}")
    page.on("pageerror", lambda error: print("page error:", error))
    page.wait_for_selector("#viewer[data-ready='true'], #error:not([hidden])")
    if page.is_visible("#error"):
        raise SystemExit(f"the page failed: {page.inner_text('#error')}")
    first = float(page.get_attribute("#viewer", "data-first-frame-ms"))
    # Time frames once sorting (and the level-of-detail subset) has settled, or say not.
    note = ""
    try:
        page.wait_for_function(
            "() => window.mlsharp.viewer.stats.settled", timeout=args.settle * 1000
        )
    except PlaywrightTimeout:
        note = f" (not settled after {args.settle:g} s)"
    drawn = page.evaluate("window.mlsharp.viewer.stats.drawn")
    fps = page.evaluate("n => window.mlsharp.viewer.benchmark(n)", args.frames)
    context.close()
    size = path.stat().st_size / 1e6
    cells = [fmt, f"{size:.1f} MB", quality, f"{drawn:,}{note}", f"{first / 1000:.1f} s"]
    return "| " + " | ".join([*cells, f"{fps:.3g}"]) + " |"


def main() -> None:
    """Print first-frame times and frame rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splats-side", type=int, default=768, help="scene is side^2 x 2")
    parser.add_argument("--frames", type=int, default=3, help="frames timed per row")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--gpu", action="store_true", help="use the GPU, not SwiftShader")
    parser.add_argument("--formats", default="ply,spz", help="comma-separated scene formats")
    parser.add_argument("--qualities", default="full,light", help="comma-separated qualities")
    parser.add_argument(
        "--light-budget", type=int, default=0, help="splats drawn in light quality (page default)"
    )
    parser.add_argument(
        "--settle", type=float, default=120, help="seconds to wait for sorting / LoD to settle"
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = large_scene(args.splats_side, args.splats_side)
        files = {}
        for fmt in args.formats.split(","):
            path = folder / f"large{splat.SUFFIXES[fmt]}"
            splat.write(scene, path, fmt)
            files[fmt] = path
        url, server = serve_page(folder / "data")
        print(f"{len(scene):,} splats, viewport {args.width}x{args.height}")
        print("| format | size | quality | splats drawn | first frame | frames/s while turning |")
        print("|---|---|---|---|---|---|")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[] if args.gpu else CHROMIUM_ARGS,
            )
            for fmt, path in files.items():
                for quality in args.qualities.split(","):
                    print(measure(browser, url, fmt, path, quality, args), flush=True)
            browser.close()
        server.should_exit = True


if __name__ == "__main__":
    main()
