r"""The backends side by side: forward, end to end, first use, cached start, memory, error.

The issue's full table (preset ``sharp`` with the synthetic parity weights, every row at
512² and 1536², on a quiet machine: roughly 1-2 hours on 2 cores), compared with the
reference's earlier measurement in docs/benchmarks.md (Apple's ``sharp predict``, whole
process at 1536², 170.4 s and 10.11 GB peak RSS, 2026-11-21, same photo and weights):

    python benchmarks/bench_backends.py --resolutions 512,1536 --runs 1 \
        --reference-seconds 170.4 --reference-rss-gb 10.11 \
        --reference-note "sharp predict, 2026-11-21 (docs/benchmarks.md)"

or with the reference run now, in turn with the rows, from a throwaway virtual environment
that has Apple's ``sharp`` installed (``{img}``, ``{out}``, ``{ckpt}`` are filled in):

    python benchmarks/bench_backends.py --resolutions 512,1536 --runs 1 \
        --reference-command 'sharp predict -i {img} -o {out} -c {ckpt} --device cpu'

A quick check of the script itself (seconds):

    python benchmarks/bench_backends.py --preset tiny --checkpoint tiny.pt --resolutions 512

Rows (``--modes``): torch fp32, torch bf16, openvino fp32, openvino bf16, openvino with int8
weights (in fp32, and in bf16: the least memory), onnxruntime fp32. For each resolution
and row, two child processes run:

1. **first use** with an empty cache for that row (the conversion the row needs, timed
   from process start until the engine is ready; the fp32 ONNX export the other rows
   reuse is counted in every non-torch row's first use, so each row's figure is what a
   user with an empty cache pays);
2. **cached start**: process start -> the first photo's Gaussians, from the warm cache,
   then ``--runs`` timed predictions: the forward alone (``StageTimes.inference``) and
   end to end (JPEG decode -> ``Engine.predict`` -> ``.ply`` written), best of the runs.
   Its peak RSS (``ru_maxrss``) covers loading and predicting.

The error per property (:mod:`mlsharp.runtime.accuracy`, p99 and mean) is against the
torch fp32 row on the same photo. Default weights: the synthetic checkpoint of the parity
fixtures (full ``sharp`` scale). Prints a Markdown table for docs/benchmarks.md.

With a reference (``--reference-seconds`` or ``--reference-command``; the reference runs at
its native 1536², so only the rows at ``--reference-resolution`` get ratios), two speed
ratios are printed per row: reference time / our end to end (JPEG -> ``.ply``, in a warm
process: the issue's "5x the reference end to end") and reference time / our cached
start -> first prediction (a whole process, as the reference's figure is), and our peak
RSS / the reference's with ``--reference-rss-gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()  # as early as possible: "process start -> first prediction"

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"
MODES = {
    "torch-fp32": {"backend": "torch"},
    "torch-bf16": {"backend": "torch", "precision": "bf16"},
    "openvino-fp32": {"backend": "openvino"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
    "openvino-int8": {"backend": "openvino", "int8_weights": True},
    "openvino-int8-bf16": {"backend": "openvino", "int8_weights": True, "precision": "bf16"},
    "onnxruntime-fp32": {"backend": "onnxruntime"},
}


def child(args: argparse.Namespace) -> None:
    """One row in this process; prints its measurements as JSON (last line)."""
    import numpy as np

    from mlsharp import splat
    from mlsharp.engine import Engine
    from mlsharp.imaging import load_image
    from mlsharp.runtime.options import RuntimeOptions

    options = RuntimeOptions(resolution=args.resolution, **MODES[args.mode])
    engine = Engine.load(
        args.checkpoint,
        preset=args.preset,
        device=args.device if options.backend == "torch" else "cpu",
        download=False,
        progress=False,
        options=options,
    )
    report: dict = {"ready_s": time.perf_counter() - START}
    if args.first_use:
        print(json.dumps(report))
        return
    out = Path(args.workdir)
    gaussians = engine.predict(load_image(args.image))
    report["first_prediction_s"] = time.perf_counter() - START
    forwards, totals = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        gaussians = engine.predict(load_image(args.image))
        splat.write(gaussians, out / f"{args.mode}.ply", "ply")
        totals.append(time.perf_counter() - start)
        forwards.append(gaussians.metadata["timings"].inference)
    report.update(forward_s=min(forwards), end_to_end_s=min(totals))
    report["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(
        out / f"{args.mode}.npz",
        positions=gaussians.positions,
        scales=gaussians.scales,
        rotations=gaussians.rotations,
        colors=gaussians.colors,
        opacities=gaussians.opacities,
    )
    print(json.dumps(report))


def run_child(
    args: argparse.Namespace, mode: str, resolution: int, cache: Path, *, first: bool
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--resolution",
        str(resolution),
        "--preset",
        args.preset,
        "--checkpoint",
        str(args.checkpoint),
        "--image",
        str(args.image),
        "--runs",
        str(args.runs),
        "--workdir",
        str(args.workdir),
        "--device",
        args.device,
        *(["--first-use"] if first else []),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_CACHE"] = str(cache)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=7200)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return {"error": " / ".join(tail)}
    return json.loads(result.stdout.strip().splitlines()[-1])


def errors_against(reference: Path, candidate: Path) -> dict:
    import numpy as np

    from mlsharp.gaussians import Gaussians
    from mlsharp.runtime.accuracy import compare_gaussians

    def load(path: Path) -> Gaussians:
        data = np.load(path)
        return Gaussians(
            positions=data["positions"],
            scales=data["scales"],
            rotations=data["rotations"],
            colors=data["colors"],
            opacities=data["opacities"],
            focal_px=1.0,
            image_size=(1, 1),
        )

    return {k: v.to_dict() for k, v in compare_gaussians(load(reference), load(candidate)).items()}


def parent(args: argparse.Namespace) -> None:
    from mlsharp.synthetic import cached_synthetic_checkpoint

    if args.checkpoint is None:
        parity = REPO / "tests" / "data" / "parity"
        args.checkpoint = cached_synthetic_checkpoint(
            parity / "sharp_checkpoint_manifest.json", parity / "weights_digest.json"
        )
    args.workdir = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    rows = []
    for resolution in [int(r) for r in args.resolutions.split(",")]:
        warm = args.workdir / f"cache-{resolution}"  # shared by the cached runs
        for mode in args.modes.split(","):
            print(f"{resolution}px {mode}", file=sys.stderr, flush=True)
            empty = args.workdir / f"empty-{resolution}-{mode}"
            first = (
                {}
                if mode.startswith("torch")
                else run_child(args, mode, resolution, empty, first=True)
            )
            shutil.rmtree(empty, ignore_errors=True)
            cached = run_child(args, mode, resolution, warm, first=False)
            if not cached.get("error") and cached_needs_warm(mode):
                cached = run_child(args, mode, resolution, warm, first=False)  # now warm
            row = {
                "resolution": resolution,
                "mode": mode,
                "first_use_s": first.get("ready_s"),
                **cached,
            }
            reference = args.workdir / "torch-fp32.npz"
            if "error" not in cached and reference.exists() and mode != "torch-fp32":
                row["errors"] = errors_against(reference, args.workdir / f"{mode}.npz")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.reference_command:
        print("reference", file=sys.stderr, flush=True)
        args.reference_seconds, args.reference_rss_gb = run_reference(args)
        args.reference_note = args.reference_note or f"measured now: {args.reference_command}"
    print_table(rows, args)
    shutil.rmtree(args.workdir, ignore_errors=True)


def run_reference(args: argparse.Namespace) -> tuple[float, float]:
    """Run ``--reference-command`` once; its wall seconds and peak RSS in GB (1e9 bytes)."""
    import shlex

    out = args.workdir / "reference-out"
    out.mkdir()
    command = [
        part.format(img=args.image, out=out, ckpt=args.checkpoint)
        for part in shlex.split(args.reference_command)
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the reference command failed (exit {status}): {command}")
    return wall, usage.ru_maxrss * 1024 / 1e9


def cached_needs_warm(mode: str) -> bool:
    """The first cached run of a converted row also fills the cache: run it again."""
    return not mode.startswith("torch")


def fmt(value: float | None, unit: str = "s") -> str:
    return "–" if value is None else f"{value:.1f} {unit}"


def ratio(numerator: float | None, denominator: float | None, suffix: str = "×") -> str:
    if not numerator or not denominator:
        return "–"
    return f"{numerator / denominator:.2f}{suffix}"


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    reference = args.reference_seconds
    header = (
        "| size | mode | forward | end to end | first use | cached start → first "
        "prediction | peak RSS | positions p99 | scales p99 | colors p99 | opacities p99 |"
    )
    columns = 11
    if reference:
        header += " ref ÷ end to end | ref ÷ start → first prediction | RSS ÷ ref |"
        columns += 3
    print(header)
    print("|---" * columns + "|")
    for row in rows:
        if "error" in row:
            print(f"| {row['resolution']}² | {row['mode']} | failed: {row['error']} |")
            continue
        errors = row.get("errors", {})

        def p99(name: str, errors: dict = errors) -> str:
            return f"{errors[name]['p99']:.2g}" if name in errors else "ref"

        line = (
            f"| {row['resolution']}² | {row['mode']} | {fmt(row.get('forward_s'))} | "
            f"{fmt(row.get('end_to_end_s'))} | {fmt(row.get('first_use_s'))} | "
            f"{fmt(row.get('first_prediction_s'))} | {row['peak_rss'] / 2**30:.1f} GiB | "
            f"{p99('positions')} | {p99('scales')} | {p99('colors')} | {p99('opacities')} |"
        )
        if reference:
            same = row["resolution"] == args.reference_resolution
            rss_gb = row["peak_rss"] / 1e9
            line += (
                f" {ratio(reference, row.get('end_to_end_s')) if same else '–'} |"
                f" {ratio(reference, row.get('first_prediction_s')) if same else '–'} |"
                f" {ratio(rss_gb, args.reference_rss_gb, '') if same else '–'} |"
            )
        print(line)
    if reference:
        rss = f", peak RSS {args.reference_rss_gb:.2f} GB" if args.reference_rss_gb else ""
        note = f" ({args.reference_note})" if args.reference_note else ""
        print(
            f"\nReference at {args.reference_resolution}²: {reference:.1f} s for a whole "
            f"process{rss}{note}. Ratios above 1× are faster than the reference; RSS ÷ ref "
            "below 1 uses less memory."
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="sharp")
    parser.add_argument("--checkpoint", type=Path, help="default: the parity synthetic weights")
    parser.add_argument("--resolutions", default="512,1536", help="comma-separated sides")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated rows (default: all: %(default)s)"
    )
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="a JPEG photo")
    parser.add_argument("--runs", type=int, default=1, help="timed predictions per row")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the torch rows (default: cpu)"
    )
    parser.add_argument(
        "--reference-seconds",
        type=float,
        help="the reference's end-to-end seconds measured earlier (e.g. 170.4: docs/"
        "benchmarks.md, sharp predict at 1536², 2026-11-21); adds the speed ratios",
    )
    parser.add_argument(
        "--reference-rss-gb", type=float, help="the reference's peak RSS in GB (e.g. 10.11)"
    )
    parser.add_argument(
        "--reference-command",
        help="run the reference now instead, once after the rows ({img} {out} {ckpt} are "
        "filled in), e.g. 'sharp predict -i {img} -o {out} -c {ckpt} --device cpu'",
    )
    parser.add_argument(
        "--reference-resolution",
        type=int,
        default=1536,
        help="the side the reference ran at; rows at this side get the ratios (default 1536)",
    )
    parser.add_argument("--reference-note", help="where the reference figure comes from")
    parser.add_argument("--child", dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--first-use", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
