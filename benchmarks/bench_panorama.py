"""Time a 360° panorama end to end: cut, the views' forwards, merge, write; CPU and memory.

    python benchmarks/bench_panorama.py --preset tiny --width 2048
    python benchmarks/bench_panorama.py --preset sharp --resolution 512 --width 2048
    python benchmarks/bench_panorama.py --preset sharp --image pano.jpg --checkpoint CKPT
    python benchmarks/bench_panorama.py --merge-only 1086   # the merge of sharp-sized views

Without ``--checkpoint`` the network gets random weights at the preset's real scale
(timing only: the splats are noise); without ``--image`` the panorama is the box room of
the tests, rendered at ``--width`` x ``--width / 2``. Prints one Markdown table row for
docs/benchmarks.md: wall seconds per stage, the process's CPU seconds (user + system) and
peak RSS, the view size and the seam residual, beside one photo (the front view) predicted
alone by the same engine just before, so the ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "sharp"))
    parser.add_argument("--checkpoint", help="weights (default: random at the preset's scale)")
    parser.add_argument("--resolution", type=int, help="internal resolution (default: native)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--image", help="an equirectangular panorama (default: the box room)")
    parser.add_argument("--width", type=int, default=2048, help="box room width in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--merge-only",
        type=int,
        metavar="SIDE",
        help="time only the merge, of six exact views of the test room SIDE px wide (1086: "
        "1,179,396 splats a view, the sharp preset's count at 1536 px); no network",
    )
    args = parser.parse_args()
    if args.merge_only:
        merge_only(args.merge_only)
        return

    import torch

    from mlsharp import splat
    from mlsharp.engine import Engine
    from mlsharp.imaging import load_image
    from mlsharp.model import build_model
    from mlsharp.panorama import cut_views, panorama_kind, predict_panorama
    from mlsharp.panorama.views import DEFAULT_LAYOUT
    from mlsharp.runtime.options import RuntimeOptions

    sys.path.insert(0, str(REPO))
    from tests.panorama.room import encode, equirect_room

    options = RuntimeOptions(precision=args.precision, resolution=args.resolution)
    start = time.perf_counter()
    if args.checkpoint:
        engine = Engine.load(
            args.checkpoint, preset=args.preset, device=args.device, options=options
        )
    else:
        torch.manual_seed(0)
        model = build_model(args.preset)
        engine = Engine.from_model(
            model.to(args.device), torch.device(args.device), options=options
        )
    ready = time.perf_counter() - start
    source = args.image or encode(equirect_room(args.width))
    image = load_image(source, name=Path(args.image).name if args.image else "room.png")
    kind = panorama_kind(image, True)
    assert kind is not None
    # Baseline on the same engine and machine state: one photo (the front view) alone.
    front = cut_views(image, kind, DEFAULT_LAYOUT, engine.internal_resolution)[0]
    engine.predict(front)  # warm-up
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    engine.predict(front)
    photo_wall, photo_cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    scene = predict_panorama(engine, image, kind=kind, max_side=engine.internal_resolution)
    predicted = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        splat.write(scene, Path(folder) / "pano.ply", "ply")
    write = time.perf_counter() - predicted
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0
    times = scene.metadata["timings"]
    info = scene.metadata["panorama"]
    views = info["views"]
    seams = info["seams"] or {"median": float("nan"), "p95": float("nan")}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    forward = times.preprocess + times.inference
    label = f"{args.preset} {engine.internal_resolution}px {args.precision}"
    print(
        f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"model ready in {ready:.1f}s",
        file=sys.stderr,
    )
    print(
        "| config | panorama | views | cut s | forward s (per view) | post-process s | "
        "merge s | write s | total wall s | CPU s | one photo wall / CPU s | peak RSS GB | "
        "splats | seam median / p95 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {label} | {image.width}x{image.height} | {len(views)} x {views[0]['side']} px | "
        f"{times.extra['cut']:.2f} | {forward:.1f} ({forward / len(views):.2f}) | "
        f"{times.postprocess:.2f} | {times.extra['merge']:.2f} | {write:.2f} | {wall:.1f} | "
        f"{cpu:.1f} | {photo_wall:.1f} / {photo_cpu:.1f} | {peak_gb:.2f} | {len(scene):,} | "
        f"{100 * seams['median']:.1f} % / {100 * seams['p95']:.1f} % |"
    )


def merge_only(side: int) -> None:
    """Time the reconciliation, the merge and the .ply write of six exact views."""
    sys.path.insert(0, str(REPO))
    from tests.panorama.room import ideal_view

    from mlsharp import splat
    from mlsharp.panorama.merge import merge_views, reconcile_scales
    from mlsharp.panorama.views import layout_views

    views = layout_views()
    scales = (1.0, 1.1, 0.9, 1.05, 0.95, 1.2)
    results = [ideal_view(view, side, scale) for view, scale in zip(views, scales, strict=True)]
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    factors, _ = reconcile_scales(views, results)
    reconciled = time.perf_counter()
    scene = merge_views(views, results, scales=factors, pixels_per_radian=4096 / (2 * math.pi))
    merged = time.perf_counter()
    cpu = cpu_seconds() - cpu0
    with tempfile.TemporaryDirectory() as folder:
        splat.write(scene, Path(folder) / "pano.ply", "ply")
    written = time.perf_counter()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert scene.depth is not None  # the exact views have depth maps
    print(
        "| splats a view | reconcile s | merge wall / CPU s | kept | depth map | write s | "
        "peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(results[0]):,} | {reconciled - wall0:.2f} | {merged - reconciled:.1f} / {cpu:.1f} "
        f"| {len(scene):,} | {scene.depth.shape[1]}x{scene.depth.shape[0]} | "
        f"{written - merged:.2f} | {peak_gb:.2f} |"
    )


if __name__ == "__main__":
    main()
