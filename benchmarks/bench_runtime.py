"""Per-stage p50/p95, throughput at batch sizes and peak memory per runtime configuration.

    python benchmarks/bench_runtime.py --checkpoint CKPT --preset sharp --device cpu \
        --configs fp32,bf16,bf16+fast_postprocess --runs 3 --batch-sizes 1,2
    python benchmarks/bench_runtime.py --random --preset sharp --device cuda \
        --configs fp32,tf32,bf16+channels_last,bf16+channels_last+cuda_graphs --runs 20

Each configuration runs in its own child process, so its peak memory is its own: CUDA
``max_memory_allocated`` on a GPU, the process's peak RSS (``ru_maxrss``) on the CPU.
The child loads the engine (timed: process start -> model ready), warms up (once by
default, ``--warmup``), then times ``--runs`` end-to-end predictions of one photo stage
by stage (decode, preprocess, forward, post-process, device-to-host transfer, .ply write)
and ``predict_many`` at each batch size. A configuration is written like ``RuntimeOptions.label()``:
``bf16+channels_last+fast_postprocess+1024px``. ``--random`` builds random weights at the
preset's real scale (timing only; outputs are noise). Prints Markdown tables for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()  # as early as possible: "process start -> ready"

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"
STAGES = ("decode", "preprocess", "forward", "postprocess", "transfer", "write", "total")


def parse_config(label: str) -> dict:
    """``bf16+channels_last+1024px`` -> RuntimeOptions keyword arguments."""
    from mlsharp.runtime.options import PRECISION_CHOICES, RuntimeOptions

    flags = {name for name, value in RuntimeOptions().to_dict().items() if value is False}
    options: dict = {}
    for token in label.split("+"):
        if token in PRECISION_CHOICES:
            options["precision"] = token
        elif token in flags:
            options[token] = True
        elif token.endswith("px") and token[:-2].isdigit():
            options["resolution"] = int(token[:-2])
        else:
            raise SystemExit(f"unknown configuration token {token!r} in {label!r}")
    return options


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class PeakTracker:
    """The largest memory use seen: CUDA peak allocated, else the process's peak RSS.

    The engine resets CUDA's peak counter at every forward (for its batch-size estimate),
    so ``note`` is called after each prediction and keeps the running maximum; a single
    read at the end would only see the last call.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.cuda_peak = 0

    def note(self) -> None:
        """Fold the peak since the last reset into the running maximum (CUDA)."""
        import torch

        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.cuda_peak = max(self.cuda_peak, peak)

    def result_gb(self) -> tuple[str, float]:
        """(what was measured, GB)."""
        if self.device.type == "cuda":
            self.note()
            return "CUDA max allocated", self.cuda_peak / 1e9
        return "peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def child(args: argparse.Namespace) -> None:
    """Measure one configuration in this process and print one JSON line."""
    import torch

    from mlsharp.engine import Engine
    from mlsharp.errors import OutOfMemory
    from mlsharp.imaging import load_image
    from mlsharp.runtime.options import RuntimeOptions
    from mlsharp.splat import write_ply

    options = RuntimeOptions(**parse_config(args.config))
    checkpoint = args.checkpoint
    if args.random:
        from mlsharp.commands.random_checkpoint import write_random_checkpoint

        checkpoint = write_random_checkpoint(args.preset, Path(tempfile.mkdtemp()) / "r.pt")
    engine = Engine.load(
        checkpoint, preset=args.preset, device=args.device, progress=False, options=options
    )
    peaks = PeakTracker(engine.device)
    peaks.note()  # the weights, loaded
    for _ in range(args.warmup):
        engine.warmup()
    peaks.note()
    ready = time.perf_counter() - START
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    out = Path(tempfile.mkdtemp()) / "out.ply"
    for _ in range(args.runs):
        begin = time.perf_counter()
        image = load_image(args.image)
        decoded = time.perf_counter()
        gaussians = engine.predict(image)
        predicted = time.perf_counter()
        peaks.note()
        write_ply(gaussians, out)
        written = time.perf_counter()
        times = gaussians.metadata["timings"]
        samples["decode"].append(decoded - begin)
        samples["preprocess"].append(times.preprocess)
        samples["forward"].append(times.inference)
        samples["postprocess"].append(times.postprocess)
        samples["transfer"].append(times.transfer)
        samples["write"].append(written - predicted)
        samples["total"].append(written - begin)
    throughput: dict[int, float | None] = {}
    batch_errors = {}
    image = load_image(args.image)
    for batch in args.batch_sizes:
        try:
            engine.predict_many([image] * batch, batch_size=batch)  # warm this shape
            peaks.note()
            begin = time.perf_counter()
            for _ in range(args.batch_runs):
                engine.predict_many([image] * batch, batch_size=batch)
            throughput[batch] = batch * args.batch_runs / (time.perf_counter() - begin)
        except OutOfMemory as error:  # a batch too large for the device: the rest stands
            throughput[batch] = None
            batch_errors[batch] = str(error)
    what, peak = peaks.result_gb()
    print(
        json.dumps(
            {
                "config": options.label(),
                "gaussians": len(gaussians),
                "resolution": engine.internal_resolution,
                "ready_s": ready,
                "samples": samples,
                "throughput": throughput,
                "batch_errors": batch_errors,
                "peak_what": what,
                "peak_gb": peak,
                "device": describe_device(engine.device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


def describe_device(device) -> str:
    """A human name of the device the engine runs on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()}, {os.cpu_count()} cores)"


def run_child(args: argparse.Namespace, config: str, timeout: float | None = None) -> dict:
    """Run one configuration in a fresh interpreter; its JSON result, or the error (its
    last line under ``error``, the end of its stderr under ``stderr``). ``timeout``
    seconds, then the child is killed and that is the error."""
    command = [sys.executable, __file__, "--child", "--config", config]
    for name in ("checkpoint", "preset", "device", "image", "runs", "warmup", "batch_runs"):
        value = getattr(args, name, None)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    command += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
    if args.random:
        command.append("--random")
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if expired.stderr else ""
        return {"config": config, "error": f"timed out after {timeout:.0f} s", "stderr": stderr}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"config": config, "error": tail, "stderr": done.stderr[-4000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def rate_text(throughput: dict, batch: int) -> str:
    """images/s at ``batch`` from a result's ``throughput``, or why there is none."""
    if str(batch) not in throughput:
        return "–"  # not measured for this configuration
    rate = throughput[str(batch)]
    return "out of memory" if rate is None else f"{rate:.2f}"


def print_tables(results: list[dict], args: argparse.Namespace) -> None:
    """Markdown: one per-stage table, then throughput and memory per configuration."""
    ok = [r for r in results if "error" not in r]
    if ok:
        first = ok[0]
        print(
            f"\n{time.strftime('%Y-%m-%d')} — {first['device']}, torch {first['torch']} "
            f"({first['threads']} threads), preset `{args.preset}`, {first['resolution']}² "
            f"internal, {first['gaussians']:,} Gaussians, {args.runs} runs, image "
            f"`{Path(args.image).name}`\n"
        )
    print("| config | " + " | ".join(f"{s} p50 / p95 ms" for s in STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    for r in results:
        if "error" in r:
            print(f"| {r['config']} | failed: {r['error']} |")
            continue
        cells = []
        for stage in STAGES:
            s = r["samples"][stage]
            cells.append(f"{percentile(s, 0.5) * 1e3:.0f} / {percentile(s, 0.95) * 1e3:.0f}")
        runs = len(r["samples"]["total"])
        label = r["config"] + ("" if runs == args.runs else f" ({runs} runs)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    sizes = args.batch_sizes
    header = ["config", "start → ready s", "peak memory GB"]
    print("| " + " | ".join(header + [f"images/s @ batch {b}" for b in sizes]) + " |")
    print("|---" * (len(header) + len(sizes)) + "|")
    for r in ok:
        cells = [r["config"], f"{r['ready_s']:.1f}", f"{r['peak_gb']:.2f} ({r['peak_what']})"]
        cells += [rate_text(r["throughput"], b) for b in sizes]
        print("| " + " | ".join(cells) + " |")
    if ok:
        base = statistics.median(ok[0]["samples"]["total"])
        print()
        for r in ok[1:]:
            ratio = base / statistics.median(r["samples"]["total"])
            print(f"- {r['config']}: {ratio:.2f}x the end-to-end speed of {ok[0]['config']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--random", action="store_true", help="random weights at real scale")
    parser.add_argument("--preset", default="sharp")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--configs", default="fp32", help="comma-separated configurations")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="forwards before ready")
    parser.add_argument("--batch-runs", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if not args.random and not args.checkpoint:
        parser.error("give --checkpoint CKPT or --random")
    if args.child:
        child(args)
        return
    results = []
    for config in args.configs.split(","):
        print(f"measuring {config} ...", file=sys.stderr, flush=True)
        results.append(run_child(args, config))
    print_tables(results, args)


if __name__ == "__main__":
    main()
