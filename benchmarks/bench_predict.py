"""Per-stage time and peak memory of one prediction, optionally against another command.

    python benchmarks/bench_predict.py --checkpoint CKPT [--image IMG] [--device cpu]
    python benchmarks/bench_predict.py --checkpoint CKPT --stages-only
    python benchmarks/bench_predict.py --checkpoint CKPT \
        --compare 'sharp predict -i {img} -o {out} -c {ckpt} --device cpu' --runs 1

Stage figures come from one in-process run (model load, decode, preprocess + forward,
post-process, write) with the process's peak RSS. With --compare, `mlsharp predict` and
the other command then run as whole processes in turn (A B A B ...), each measured by its
own wall time and peak RSS (os.wait4), and the ratios are printed per pair.
Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def stage_times(args: argparse.Namespace) -> list[tuple[str, float]]:
    """Run one prediction in-process and return (stage, seconds) rows."""
    import torch

    # The same options `mlsharp predict` would use: MLSHARP_* environment + --extra flags,
    # parsed by the CLI's own parser so every runtime flag applies here too.
    from mlsharp.cli import build_parser
    from mlsharp.config import Settings
    from mlsharp.engine import Engine
    from mlsharp.imaging import load_image
    from mlsharp.splat import write_ply

    flags = build_parser().parse_args(["predict", "in.jpg", "-o", "out", *shlex.split(args.extra)])
    options = Settings.from_env(
        precision=flags.precision, resolution=flags.resolution, batch_size=flags.batch_size
    ).runtime_options()
    rows = []
    start = time.perf_counter()
    engine = Engine.load(
        args.checkpoint, preset=args.preset, device=args.device, progress=False, options=options
    )
    rows.append(("build model + load checkpoint", time.perf_counter() - start))
    rows.append(("  (peak RSS after load, GB)", peak_rss_gb()))
    start = time.perf_counter()
    image = load_image(args.image)
    rows.append(("decode image", time.perf_counter() - start))
    gaussians = engine.predict(image)
    times = gaussians.metadata["timings"]
    rows.append(("preprocess (resize)", times.preprocess))
    rows.append(("network forward", times.inference))
    rows.append(("post-process (unprojection)", times.postprocess))
    rows.append(("device-to-host copy (not hidden behind post-processing)", times.transfer))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_ply(gaussians, Path(tmp) / "out.ply")
        rows.append(("write .ply", time.perf_counter() - start))
    rows.append(("peak RSS (GB)", peak_rss_gb()))
    rows.append((f"torch threads / version: {torch.get_num_threads()} / {torch.__version__}", 0))
    return rows


def run_measured(command: list[str]) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, peak RSS GB, exit status) of that process tree's
    main process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024 / 1e9, process.returncode


def compare(args: argparse.Namespace) -> list[tuple[int, float, float, float, float]]:
    """Alternate ours and the other command; rows (run, wall A, wall B, rss A, rss B)."""
    rows = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as out_a, tempfile.TemporaryDirectory() as out_b:
            ours = [
                sys.executable,
                "-m",
                "mlsharp",
                "predict",
                str(args.image),
                "-o",
                out_a,
                "--checkpoint",
                str(args.checkpoint),
                "--device",
                args.device,
                "-q",
                "--preset",
                args.preset,
                *shlex.split(args.extra),
            ]
            other = shlex.split(
                args.compare.format(img=args.image, out=out_b, ckpt=args.checkpoint)
            )
            wall_a, rss_a, code_a = run_measured(ours)
            wall_b, rss_b, code_b = run_measured(other)
            if code_a or code_b:
                raise SystemExit(f"a command failed (exit {code_a} / {code_b})")
            rows.append((run, wall_a, wall_b, rss_a, rss_b))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="sharp")
    parser.add_argument("--compare", help="other command; {img} {out} {ckpt} are filled in")
    parser.add_argument(
        "--extra", default="", help="more `mlsharp predict` options, e.g. '--precision bf16'"
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--stages-only", action="store_true")
    args = parser.parse_args()

    print(
        f"date {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, image {args.image.name}, device {args.device}\n"
    )
    print("| stage | seconds |\n|---|---|")
    for name, value in stage_times(args):
        print(f"| {name} | {value:.2f} |")
    if args.compare and not args.stages_only:
        print(
            "\n| run | mlsharp wall s | other wall s | ratio | mlsharp peak GB "
            "| other peak GB | ratio |\n|---|---|---|---|---|---|---|"
        )
        for run, wa, wb, ra, rb in compare(args):
            print(
                f"| {run} {args.extra} | {wa:.1f} | {wb:.1f} | {wa / wb:.2f} | {ra:.2f} | {rb:.2f} "
                f"| {ra / rb:.2f} |"
            )


if __name__ == "__main__":
    main()
