"""The device check: everything that only a GPU can show, in one run, as one table.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json
    python benchmarks/gpu_check.py --preset tiny --quick        # CPU: what it can (a test)

Meant for one call of under 8 minutes on an H100/H200 (the full ``sharp`` preset with
random weights at the real scale; ``--checkpoint`` for real ones). On a machine without
CUDA it runs what it can and prints SKIP for the rest. Rows, in order:

* ``environment``: torch, CUDA, the GPUs.
* ``cuda tests``: ``pytest -m cuda`` over the test files that hold CUDA-only tests (fast
  paths vs fp32 on the tiny preset, CUDA graphs on cuda:0/1 with two photos from a worker
  thread, out-of-memory release, the batch estimate, gsplat parity).
* ``sync-free forward``: the forward under ``torch.cuda.set_sync_debug_mode("error")``
  (fp32 and bf16); on the CPU the host-sync counter instead.
* ``cuda graphs cuda:N``: a graph engine on each of the first two GPUs, two different
  photos replayed alternately from a worker thread, while another thread asks the memory
  guard for releases; equal to the eager engine.
* ``<precision> vs fp32``: the autotune accuracy gates (``mlsharp.runtime.accuracy``) on
  the preset; with random weights the numbers are reported, not gated (WARN).
* ``no CUDA context``: doctor's probe creates no context on any GPU.
* ``pinned staging``: a batch's host buffers are exactly the results' size, the caching
  host allocator keeps nothing, a release frees them.
* ``bench <config>``: ``benchmarks/bench_runtime.py`` per configuration (own process):
  forward and JPEG -> .ply p50, images/s batched, start -> ready, peak memory.
* ``bench_backends``: ``benchmarks/bench_backends.py`` when the tree has it.
* ``rasterizer ...``: the PyTorch rasterizer on the device with its default and the CPU
  step budget, and gsplat against it (time and image difference) when gsplat is usable.
* ``goals``: the issue's targets (bf16 forward <= 50 ms at 1536², JPEG -> .ply <= 200 ms
  p50, >= 10 images/s batched, cold start <= 10 s) against the measured rows.

Exit status 1 if any row FAILs. ``--budget-s`` stops starting new rows once spent.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

PHOTO = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"
#: Test files holding the ``cuda``-marked tests (collecting every test file would need
#: the service stack, which the device machine's Python may lack).
CUDA_TEST_FILES = (
    "tests/test_precision.py",
    "tests/test_memory.py",
    "tests/test_batching.py",
    "tests/test_sync_free.py",
    "tests/render/test_gsplat_parity.py",
)
#: The issue's goals on an H100/H200 (full preset, 1536² internal).
GOALS = {"bf16_forward_ms": 50.0, "ply_p50_ms": 200.0, "images_per_s": 10.0, "ready_s": 10.0}


@dataclass
class Row:
    """One line of the table."""

    name: str
    status: str  # PASS, FAIL, WARN, SKIP, INFO
    result: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


class Outcome(Exception):
    """Ends a check early with a status other than PASS (SKIP, WARN)."""

    def __init__(self, status: str, result: str) -> None:
        super().__init__(result)
        self.status, self.result = status, result


def skip(reason: str) -> Outcome:
    return Outcome("SKIP", reason)


def first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


class Context:
    """What the checks share: options, device, weights, photos, loaded engines."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.gpus = torch.cuda.device_count() if self.cuda else 0
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        self.workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.real_weights = args.checkpoint is not None
        self._checkpoint: Path | None = Path(args.checkpoint) if args.checkpoint else None
        self._photos: list[Any] | None = None
        self._reference: Any = None
        self.bench: list[dict[str, Any]] = []

    @property
    def checkpoint(self) -> Path:
        """The weights: ``--checkpoint``, else random ones at the preset's scale (once)."""
        if self._checkpoint is None:
            from mlsharp.commands.random_checkpoint import write_random_checkpoint

            self._checkpoint = write_random_checkpoint(
                self.args.preset, self.workdir / f"random-{self.args.preset}.pt"
            )
        return self._checkpoint

    @property
    def photos(self) -> list[Any]:
        """Two different photos: the parity JPEG and the synthetic autotune scene."""
        if self._photos is None:
            from mlsharp.imaging import load_image
            from mlsharp.runtime.autotune import synthetic_photo

            self._photos = [load_image(PHOTO), synthetic_photo(800, 600)]
        return self._photos

    @property
    def reference(self) -> Any:
        """The fp32 Gaussians of the first photo on the first device (computed once)."""
        if self._reference is None:
            self._reference = self.engine().predict(self.photos[0])
            self.free()
        return self._reference

    def engine(self, device: str | None = None, **options: Any) -> Any:
        from mlsharp.engine import Engine
        from mlsharp.runtime.options import RuntimeOptions

        return Engine.load(
            self.checkpoint,
            preset=self.args.preset,
            device=device or str(self.device),
            download=False,
            progress=False,
            options=RuntimeOptions(**options),
        )

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def bf16_native(self) -> bool:
        from mlsharp.runtime.precision import bf16_problem

        return bf16_problem(self.device) is None

    def tf32(self) -> bool:
        return (
            self.cuda
            and not self.torch.version.hip
            and (self.torch.cuda.get_device_capability(self.device) >= (8, 0))
        )


def forward_of(engine: Any) -> Callable[[Any, Any], Any]:
    """The engine's network forward under its precision policy (the graph-captured part)."""
    return engine.runtime.run  # the torch runtime's forward (mlsharp.backends)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def check_environment(ctx: Context) -> Row:
    torch = ctx.torch
    if not ctx.cuda:
        return Row("environment", "INFO", f"torch {torch.__version__}, no CUDA GPU: CPU only")
    names = [torch.cuda.get_device_name(i) for i in range(ctx.gpus)]
    backend = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
    return Row("environment", "INFO", f"torch {torch.__version__}, {backend}, {names}")


def check_cuda_tests(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU")
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [*command, *CUDA_TEST_FILES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=ctx.args.pytest_timeout,
        check=False,
    )
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    if done.returncode != 0:
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        sys.stderr.write(done.stdout[-6000:] + done.stderr[-3000:])
        return Row("cuda tests", "FAIL", "; ".join([summary, *failed[:5]]))
    return Row("cuda tests", "PASS", summary)


def check_sync_free(ctx: Context) -> Row:
    torch = ctx.torch
    # (On the CPU, tests/test_sync_free.py covers bf16 too; quick mode checks fp32 only.)
    lower = ["bf16"] if ctx.bf16_native() and (ctx.cuda or not ctx.args.quick) else []
    precisions = ["fp32", *lower]
    done = []
    for precision in precisions:
        engine = ctx.engine(precision=precision)
        size = engine.internal_resolution
        image = torch.rand(1, 3, size, size, device=ctx.device)
        factor = torch.ones(1, device=ctx.device)
        forward = forward_of(engine)
        with torch.inference_mode():
            if ctx.cuda:
                for _ in range(2):  # lazy initialisation and cuDNN's choices may sync
                    forward(image, factor)
                torch.cuda.synchronize(ctx.device)
                torch.cuda.set_sync_debug_mode("error")
                try:
                    forward(image, factor)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize(ctx.device)
            else:
                from mlsharp.runtime.host_syncs import HostSyncCounter

                with HostSyncCounter() as counter:
                    forward(image, factor)
                if counter.calls:
                    return Row("sync-free forward", "FAIL", f"{precision}: {dict(counter.calls)}")
        done.append(precision)
        del engine
        ctx.free()
    how = "sync debug mode 'error'" if ctx.cuda else "host-sync counter (CPU)"
    return Row("sync-free forward", "PASS", f"{', '.join(done)}: no sync ({how})")


def graphs_check(index: int) -> Callable[[Context], Row]:
    def check(ctx: Context) -> Row:
        name = f"cuda graphs cuda:{index}"
        if not ctx.cuda:
            raise skip("no CUDA GPU")
        if index >= ctx.gpus:
            raise skip(f"{ctx.gpus} GPU(s)")
        import numpy as np

        from mlsharp.runtime.accuracy import compare_gaussians

        device = f"cuda:{index}"
        eager = ctx.engine(device)
        expected = [eager.predict(p) for p in ctx.photos]
        del eager
        ctx.free()
        graphs = ctx.engine(device, cuda_graphs=True)
        got: list[Any] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def predict() -> None:  # a worker thread: its current device is cuda:0
            try:
                got.extend(graphs.predict(p) for p in ctx.photos + ctx.photos)
            except BaseException as error:
                errors.append(error)
            finally:
                stop.set()

        def release() -> None:  # the idle/threshold releases of other worker threads
            while not stop.is_set():
                graphs.memory_guard.release("idle", wait=False)
                time.sleep(0.01)

        threads = [threading.Thread(target=predict), threading.Thread(target=release)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        if errors:
            raise errors[0]
        worst = 0.0
        for result, reference in zip(got, expected + expected, strict=True):
            worst = max(worst, compare_gaussians(reference, result)["positions"].p99)
        different = not np.allclose(got[0].positions[:1000], got[1].positions[:1000])
        captured = getattr(graphs.runtime, "_graphs", None)  # the torch runtime's graphs
        shapes = captured.captured_shapes if captured is not None else "?"
        graphs.memory_guard.release("idle")
        ctx.free()
        status = "PASS" if worst < 1e-4 and different else "FAIL"
        return Row(
            name,
            status,
            f"4 replays of 2 photos from a worker thread: positions p99 {worst:.1e} vs eager; "
            f"photos differ: {different}; graphs: {shapes}",
        )

    return check


def check_precisions(ctx: Context) -> Row:
    from mlsharp.runtime.accuracy import compare_gaussians, threshold_failures

    candidates = ["bf16"] if ctx.bf16_native() else []
    if ctx.cuda:
        candidates = (["tf32"] if ctx.tf32() else []) + candidates + ["fp16"]
    if not candidates:
        raise skip("no lower precision on this device")
    photo, reference = ctx.photos[0], ctx.reference
    parts, failing = [], []
    for precision in candidates:
        engine = ctx.engine(precision=precision)
        errors = compare_gaussians(reference, engine.predict(photo))
        del engine
        ctx.free()
        failures = threshold_failures(errors)
        p99 = ", ".join(f"{k} {v.p99:.1e}" for k, v in errors.items())
        parts.append(f"{precision}: {'within' if not failures else 'OUTSIDE'} ({p99})")
        if failures:
            failing.append(precision)
    status = "PASS" if not failing else ("FAIL" if ctx.real_weights else "WARN")
    note = "" if ctx.real_weights else " [random weights: not gated]"
    return Row("precisions vs fp32", status, "; ".join(parts) + note)


def check_no_contexts(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU")
    script = (
        "import json, torch\n"
        "from mlsharp.runtime.devices import probe_system\n"
        "probe = probe_system(query_driver=False)\n"
        "print(json.dumps({'contexts': [torch._C._cuda_hasPrimaryContext(i) "
        "for i in range(torch.cuda.device_count())], "
        "'gpus': [(g.name, g.bf16, g.free_memory) for g in probe.gpus]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return Row("no CUDA context", "FAIL", done.stderr.strip().splitlines()[-1])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    status = "PASS" if not any(report["contexts"]) else "FAIL"
    return Row("no CUDA context", status, f"contexts after probe: {report['contexts']}; "
               f"GPUs (name, bf16, free): {report['gpus']}")  # fmt: skip


def check_pinned(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU (pinned memory is CUDA only)")
    torch = ctx.torch
    from mlsharp.runtime.transfer import staging_bytes

    stats = getattr(torch.cuda, "host_memory_stats", None)

    def host_cached() -> int | None:
        if stats is None:
            return None
        figures = stats()  # pinned blocks PyTorch's caching host allocator owns
        return int(figures.get("allocated_bytes.current", 0) or 0)

    engine = ctx.engine(batch_size=4)
    before = host_cached()
    results = engine.predict_many([ctx.photos[0]] * 4, batch_size=4)
    held = engine._staging.nbytes
    expected = 4 * staging_bytes(
        {k: torch.from_numpy(v) if v is not None else None for k, v in _arrays(results[0]).items()}
    )
    after = host_cached()
    engine.memory_guard.release("idle")
    released = engine._staging.nbytes
    del engine, results
    ctx.free()
    grown = None if before is None or after is None else after - before
    ok = held == expected and released == 0 and (grown is None or grown < 16 * 2**20)
    return Row(
        "pinned staging",
        "PASS" if ok else "FAIL",
        f"batch of 4: staging {held / 2**20:.1f} MiB (results {expected / 2**20:.1f} MiB), "
        f"caching host allocator grew {'?' if grown is None else f'{grown / 2**20:.1f} MiB'}, "
        f"after release {released} B",
    )


def _arrays(gaussians: Any) -> dict[str, Any]:
    """The arrays a prediction copied to the host, as the engine staged them."""
    return {
        "positions": gaussians.positions,
        "scales": gaussians.scales,
        "rotations": gaussians.rotations,
        "colors": gaussians.colors,
        "opacities": gaussians.opacities,
        "depth": gaussians.depth,
    }


def bench_configs(ctx: Context) -> list[str]:
    if ctx.args.configs:
        return ctx.args.configs.split(",")
    if not ctx.cuda:
        return ["fp32"]
    configs = ["fp32"] + (["tf32"] if ctx.tf32() else [])
    if ctx.bf16_native():
        configs += ["bf16+channels_last", "bf16+channels_last+cuda_graphs"]
    return [*configs, "fp16+channels_last"]


def check_bench_runtime(ctx: Context) -> list[Row]:
    spec = importlib.util.spec_from_file_location(
        "bench_runtime", REPO / "benchmarks" / "bench_runtime.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    quick = ctx.args.quick
    args = argparse.Namespace(
        checkpoint=str(ctx.checkpoint),
        random=False,
        preset=ctx.args.preset,
        device=str(ctx.device),
        image=str(PHOTO),
        runs=1 if quick else 10,
        batch_runs=1 if quick else 2,
        batch_sizes=([] if quick else [1]) if not ctx.cuda else ([1, 4] if quick else [1, 8]),
    )
    rows = []
    for config in bench_configs(ctx):
        print(f"  bench {config} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = bench.run_child(args, config)
        seconds = time.perf_counter() - start
        if "error" in result:
            rows.append(Row(f"bench {config}", "FAIL", result["error"], seconds))
            continue
        ctx.bench.append(result)
        forward = statistics.median(result["samples"]["forward"]) * 1e3
        total = statistics.median(result["samples"]["total"]) * 1e3
        rates = "".join(f"{float(v):.1f} img/s @{k}, " for k, v in result["throughput"].items())
        rows.append(
            Row(
                f"bench {config}",
                "PASS",
                f"forward p50 {forward:.0f} ms, JPEG->.ply p50 {total:.0f} ms, {rates}"
                f"ready {result['ready_s']:.1f} s, peak {result['peak_gb']:.2f} GB "
                f"({result['peak_what']})",
                seconds,
                data=result,
            )
        )
    print("", file=sys.stderr)
    bench.print_tables(ctx.bench, args) if ctx.bench else None
    return rows


def check_bench_backends(ctx: Context) -> Row:
    script = REPO / "benchmarks" / "bench_backends.py"
    if not script.exists():
        raise skip("benchmarks/bench_backends.py is not in this tree yet")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    helps = subprocess.run(
        [sys.executable, str(script), "--help"], env=env, capture_output=True, text=True
    ).stdout
    from mlsharp.model import preset as preset_config

    fp32_only = ctx.args.quick or not ctx.bf16_native()
    command = [sys.executable, str(script)]
    # The torch rows on the GPU at the preset's own size (the OpenVINO and ONNX Runtime
    # rows measure CPUs; their exports would not fit this check's time).
    for flag, value in (
        ("--checkpoint", str(ctx.checkpoint)),
        ("--preset", ctx.args.preset),
        ("--device", str(ctx.device)),
        ("--resolutions", str(preset_config(ctx.args.preset).internal_resolution)),
        ("--modes", "torch-fp32" if fp32_only else "torch-fp32,torch-bf16"),
        ("--runs", "1" if ctx.args.quick else "3"),
    ):
        if flag in helps:
            command += [flag, value]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    sys.stderr.write(done.stdout)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    last = lines[-1] if lines else "(no output)"
    return Row("bench_backends", "PASS" if done.returncode == 0 else "FAIL", last[:300])


def check_rasterizers(ctx: Context) -> list[Row]:
    torch = ctx.torch
    from mlsharp.render.camera import camera_at
    from mlsharp.render.composite import BUDGETS, default_budget
    from mlsharp.render.gsplat_backend import (
        gsplat_available,
        gsplat_failure,
        gsplat_max_alpha,
        rasterize_gsplat,
    )
    from mlsharp.render.scene import SceneTensors
    from mlsharp.render.torch_backend import rasterize_torch
    from mlsharp.render.trajectory import make_trajectory

    gaussians = ctx.reference
    if ctx.args.quick:
        size, frames = ((512, 512), 2) if ctx.cuda else ((96, 72), 1)
    else:
        size, frames = (1024, 1024), 3
    cameras = [camera_at(gaussians, size), *make_trajectory(gaussians, "orbit", frames, size)]
    scene = SceneTensors.from_gaussians(gaussians, ctx.device)
    background = torch.zeros(3)

    def timed(render: Callable[[Any], Any]) -> tuple[float, list[Any]]:
        images = [render(cameras[0])]  # warm-up (kernels, allocator)
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)
        start = time.perf_counter()
        images += [render(camera) for camera in cameras[1:]]
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)
        return (time.perf_counter() - start) / (len(cameras) - 1), images

    rows = []
    budgets = {default_budget(ctx.device)} | ({BUDGETS["cpu"]} if ctx.cuda else set())
    for budget in sorted(budgets, reverse=True):

        def with_budget(camera: Any, budget: int = budget) -> Any:
            return rasterize_torch(scene, camera, background, budget=budget)

        seconds, _ = timed(with_budget)
        rows.append(
            Row(
                f"rasterizer torch budget {budget}",
                "PASS",
                f"{seconds * 1e3:.0f} ms/frame at {size[0]}x{size[1]}, {len(gaussians):,} splats "
                f"on {ctx.device}",
            )
        )
    if not ctx.cuda:
        rows.append(Row("rasterizer gsplat", "SKIP", "no CUDA GPU"))
        return rows
    if not gsplat_available(ctx.device):
        rows.append(Row("rasterizer gsplat", "SKIP", "gsplat not installed (or ROCm)"))
        return rows
    try:
        clamp = gsplat_max_alpha()
        seconds, images = timed(lambda c: rasterize_gsplat(scene, c, background))
    except Exception as error:
        reason = gsplat_failure(error)
        if reason is None:
            raise
        rows.append(Row("rasterizer gsplat", "WARN", f"installed but unusable: {reason}"))
        return rows
    matched = [rasterize_torch(scene, c, background, max_alpha=clamp) for c in cameras]
    diffs = [(a[0] - b[0]).abs() for a, b in zip(matched, images, strict=True)]
    mean = max(d.mean().item() for d in diffs)
    worst = max(d.max().item() for d in diffs)
    status = "PASS" if mean < 1e-3 else "FAIL"
    rows.append(
        Row(
            "rasterizer gsplat",
            status,
            f"{seconds * 1e3:.0f} ms/frame; vs torch (max alpha {clamp}): mean |diff| "
            f"{mean:.1e}, max {worst:.1e}",
        )
    )
    return rows


def check_goals(ctx: Context) -> Row:
    if not ctx.cuda or ctx.args.preset != "sharp":
        raise skip("the goals are for the full preset on a GPU")
    if not ctx.bench:
        raise skip("no benchmark rows")
    best_total = min(statistics.median(r["samples"]["total"]) for r in ctx.bench) * 1e3
    bf16 = [r for r in ctx.bench if r["config"].startswith("bf16")]
    bf16_forward = (
        min(statistics.median(r["samples"]["forward"]) for r in bf16) * 1e3 if bf16 else None
    )
    rate = max(float(v) for r in ctx.bench for v in r["throughput"].values())
    ready = min(r["ready_s"] for r in ctx.bench)
    met = {
        "bf16 forward": bf16_forward is not None and bf16_forward <= GOALS["bf16_forward_ms"],
        "JPEG->.ply p50": best_total <= GOALS["ply_p50_ms"],
        "images/s": rate >= GOALS["images_per_s"],
        "cold start": ready <= GOALS["ready_s"],
    }
    forward_text = "n/a" if bf16_forward is None else f"{bf16_forward:.0f}"
    text = (
        f"bf16 forward {forward_text} ms (<= 50), JPEG->.ply {best_total:.0f} ms (<= 200), "
        f"{rate:.1f} img/s (>= 10), ready {ready:.1f} s (<= 10); missed: "
        f"{[k for k, v in met.items() if not v] or 'none'}"
    )
    return Row("goals", "PASS" if all(met.values()) else "WARN", text)


# --------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------

CHECKS: list[tuple[str, Callable[[Context], Row | list[Row]]]] = [
    ("environment", check_environment),
    ("cuda tests", check_cuda_tests),
    ("sync-free forward", check_sync_free),
    ("cuda graphs cuda:0", graphs_check(0)),
    ("cuda graphs cuda:1", graphs_check(1)),
    ("precisions vs fp32", check_precisions),
    ("no CUDA context", check_no_contexts),
    ("pinned staging", check_pinned),
    ("bench", check_bench_runtime),
    ("bench_backends", check_bench_backends),
    ("rasterizers", check_rasterizers),
    ("goals", check_goals),
]


def run_checks(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    started = time.perf_counter()
    for name, check in CHECKS:
        if time.perf_counter() - started > ctx.args.budget_s:
            rows.append(Row(name, "SKIP", f"time budget of {ctx.args.budget_s:g} s spent"))
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            result = check(ctx)
            produced = result if isinstance(result, list) else [result]
        except Outcome as outcome:
            produced = [Row(name, outcome.status, outcome.result)]
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            produced = [Row(name, "FAIL", first_line(error))]
        finally:
            ctx.free()
        seconds = time.perf_counter() - start
        for row in produced:
            row.seconds = row.seconds or seconds
        rows += produced
    return rows


def print_table(rows: list[Row], ctx: Context) -> None:
    torch = ctx.torch
    device = torch.cuda.get_device_name(0) if ctx.cuda else "CPU"
    weights = "real weights" if ctx.real_weights else "random weights"
    print(
        f"\n## gpu_check {time.strftime('%Y-%m-%d %H:%M')} — {device}, torch {torch.__version__}, "
        f"preset `{ctx.args.preset}` ({weights})\n"
    )
    print("| check | status | result | s |")
    print("|---|---|---|---|")
    for row in rows:
        result = row.result.replace("|", "/")
        print(f"| {row.name} | {row.status} | {result} | {row.seconds:.1f} |")
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "WARN", "SKIP")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sharp")
    parser.add_argument("--checkpoint", help="real weights (default: random at real scale)")
    parser.add_argument("--configs", help="bench_runtime configurations (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller frames")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--pytest-timeout", type=float, default=240.0)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    ctx = Context(args)
    rows = run_checks(ctx)
    print_table(rows, ctx)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
