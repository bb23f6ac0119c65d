"""The device check: everything that only a GPU can show, in one run, as one table.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json
    python benchmarks/gpu_check.py --preset tiny --quick        # CPU: what it can (a test)

Meant for one call of under 8 minutes on an H100/H200 (the full ``sharp`` preset with
random weights at the real scale; ``--checkpoint`` for real ones). On a machine without
CUDA it runs what it can and prints SKIP for the rest. The JSON report is rewritten after
every row, each child process gets at most the time left, and at ``--deadline-s`` a
watchdog writes the report and the table of the rows done so far and ends the process,
so a run cut short still tells what it found. Rows, in order:

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
* ``pinned staging``: a batch's host buffers are the results' size (in whole pages), all
  page-locked, the caching host allocator keeps nothing, a release frees them.
* ``device names``: ``cuda:N`` beyond the visible GPUs is refused (``cuda:256`` too, which
  torch's 8-bit index would read as ``cuda:0``).
* ``bench <config>``: ``benchmarks/bench_runtime.py`` per configuration (own process):
  forward and JPEG -> .ply p50, images/s batched, start -> ready, peak memory.
* ``bench_backends``: ``benchmarks/bench_backends.py`` when the tree has it.
* ``rasterizer ...``: the PyTorch rasterizer on the device with its default and the CPU
  step budget, and gsplat against it (time and image difference) when gsplat is usable.
* ``goals``: the issue's targets (bf16 forward <= 50 ms at 1536², JPEG -> .ply <= 200 ms
  p50, >= 10 images/s batched, cold start <= 10 s) against the measured rows.

Exit status 1 if any row FAILs, 3 if the deadline cut the run short. ``--budget-s``
stops starting new rows (and benchmark configurations) once spent; ``--deadline-s`` is
the hard end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
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

START = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# The child processes (pytest, bench_runtime's children, doctor's probe) import mlsharp
# and the tests from this tree too, whether or not PYTHONPATH was given.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)

PHOTO = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"
#: Test files holding the ``cuda``-marked tests (collecting every test file would need
#: the service stack, which the device machine's Python may lack).
CUDA_TEST_FILES = (
    "tests/test_precision.py",
    "tests/test_memory.py",
    "tests/test_batching.py",
    "tests/test_sync_free.py",
    "tests/test_transfer.py",
    "tests/render/test_gsplat_parity.py",
)
#: Seconds a benchmark configuration needs at least (child start, load, runs) to be
#: started: on the full preset on a GPU, else (tiny, CPU) less.
CONFIG_SECONDS = {"sharp": 45.0}
CONFIG_SECONDS_DEFAULT = 20.0
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


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (a child's stderr: its exception)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


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
        self._checkpoint_error: str | None = None
        self._photos: list[Any] | None = None
        self._reference: Any = None
        self._base: Any = None  # the fp32 engine on the first device, shared by rows
        self.bench: list[dict[str, Any]] = []
        self.rows: list[Row] = []  # done so far (the watchdog reports them)
        self.running: str | None = None  # the check in progress
        self.report_lock = threading.Lock()
        self.reported = False
        self.info = environment(self)

    def add(self, rows: list[Row]) -> None:
        """Record finished rows and rewrite the JSON report."""
        with self.report_lock:
            self.rows += rows
            self.running = None
            if not self.reported:
                write_report(self, self.rows, complete=False)

    def elapsed(self) -> float:
        """Seconds since the script started."""
        return time.monotonic() - START

    def time_left(self) -> float:
        """Seconds until the hard deadline."""
        return self.args.deadline_s - self.elapsed()

    def child_timeout(self, limit: float) -> float:
        """A child process's timeout: ``limit``, but ending 15 s before the deadline."""
        return max(1.0, min(limit, self.time_left() - 15.0))

    def budget_spent(self) -> bool:
        """Whether no new row or configuration should start."""
        return self.elapsed() > self.args.budget_s

    @property
    def checkpoint(self) -> Path:
        """The weights: ``--checkpoint``, else random ones at the preset's scale (once)."""
        if self._checkpoint_error is not None:  # one failed try (disk full): not again per row
            raise RuntimeError(f"no weights: {self._checkpoint_error}")
        if self._checkpoint is None:
            from mlsharp.commands.random_checkpoint import write_random_checkpoint

            try:
                self._checkpoint = write_random_checkpoint(
                    self.args.preset, self.workdir / f"random-{self.args.preset}.pt"
                )
            except Exception as error:
                self._checkpoint_error = first_line(error)
                raise
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
            self._reference = self.base_engine().predict(self.photos[0])
        return self._reference

    def base_engine(self) -> Any:
        """The fp32 engine on the first device (loaded once; :meth:`drop_base` frees it)."""
        if self._base is None:
            self._base = self.engine()
        return self._base

    def drop_base(self) -> None:
        """Free the shared engine (before the benchmarks, which need the memory)."""
        self._base = None
        self.free()

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
            with contextlib.suppress(Exception):  # a broken device: the next row says so
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
    gpus = [f"{g['name']} (sm {g['capability']}, {g['memory_gb']} GB)" for g in ctx.info["gpus"]]
    backend = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
    extras = ", ".join(
        f"{m} {'yes' if ctx.info[m] else 'no'}" for m in ("gsplat", "triton", "pynvml")
    )
    return Row(
        "environment",
        "INFO",
        f"torch {torch.__version__}, {backend}, cuDNN {ctx.info.get('cudnn')}, {gpus}; {extras}",
    )


def check_cuda_tests(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU")
    # -rfEs: the reasons of failures, errors and skips (a second GPU, gsplat) in the log;
    # a test file that cannot be imported here fails alone, the others still run.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--continue-on-collection-errors", *CUDA_TEST_FILES]
    timeout = ctx.child_timeout(ctx.args.pytest_timeout)
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
        stdout, code = done.stdout, done.returncode
        sys.stderr.write(stdout[-8000:] + done.stderr[-2000:])
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode(errors="replace") if expired.stdout else ""
        sys.stderr.write(stdout[-8000:])
        return Row("cuda tests", "FAIL", f"timed out after {timeout:.0f} s (output in the log)")
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    if code != 0:
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        return Row("cuda tests", "FAIL", "; ".join([summary, *failed[:5]]))
    return Row("cuda tests", "PASS", summary)


def check_sync_free(ctx: Context) -> Row:
    # (On the CPU, tests/test_sync_free.py covers bf16 too; quick mode checks fp32 only.)
    lower = ["bf16"] if ctx.bf16_native() and (ctx.cuda or not ctx.args.quick) else []
    parts, failed = [], False
    for precision in ["fp32", *lower]:
        try:
            engine = ctx.base_engine() if precision == "fp32" else ctx.engine(precision=precision)
            syncs = _forward_syncs(ctx, engine)
        except Exception as error:  # the sync debug mode raises at the first sync
            traceback.print_exc(file=sys.stderr)
            syncs = first_line(error)
        finally:
            engine = None
            ctx.free()
        failed |= syncs is not None
        parts.append(f"{precision}: {'no sync' if syncs is None else syncs}")
    how = "sync debug mode 'error'" if ctx.cuda else "host-sync counter (CPU)"
    return Row("sync-free forward", "FAIL" if failed else "PASS", f"{'; '.join(parts)} ({how})")


def _forward_syncs(ctx: Context, engine: Any) -> str | None:
    """What made one forward of ``engine`` sync with the host (``None``: nothing)."""
    torch = ctx.torch
    size = engine.internal_resolution
    image = torch.rand(1, 3, size, size, device=ctx.device)
    factor = torch.ones(1, device=ctx.device)
    forward = forward_of(engine)
    with torch.inference_mode():
        if not ctx.cuda:
            from mlsharp.runtime.host_syncs import HostSyncCounter

            with HostSyncCounter() as counter:
                forward(image, factor)
            return str(dict(counter.calls)) if counter.calls else None
        for _ in range(2):  # lazy initialisation and cuDNN's choices may sync
            forward(image, factor)
        torch.cuda.synchronize(ctx.device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            forward(image, factor)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize(ctx.device)
    return None


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
        eager = ctx.base_engine() if index == 0 else ctx.engine(device)
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

        # Daemons: a hung capture must not keep the process from reporting and exiting.
        threads = [threading.Thread(target=f, daemon=True) for f in (predict, release)]
        for thread in threads:
            thread.start()
        wait = max(10.0, ctx.time_left() - 30.0)
        threads[0].join(wait)
        stop.set()
        threads[1].join(10)
        if threads[0].is_alive():
            return Row(name, "FAIL", f"the graph engine did not finish 4 photos in {wait:.0f} s")
        if errors:
            raise errors[0]
        worst = 0.0
        for result, reference in zip(got, expected + expected, strict=True):
            worst = max(worst, compare_gaussians(reference, result)["positions"].p99)
        different = not np.allclose(got[0].positions[:1000], got[1].positions[:1000])
        captured = getattr(graphs.runtime, "_graphs", None)  # the torch runtime's graphs
        shapes = captured.captured_shapes if captured is not None else "?"
        releases = sum(graphs.memory_guard.releases.values())
        graphs.memory_guard.release("idle")
        ctx.free()
        status = "PASS" if worst < 1e-4 and different else "FAIL"
        return Row(
            name,
            status,
            f"4 replays of 2 photos from a worker thread: positions p99 {worst:.1e} vs eager; "
            f"photos differ: {different}; graphs: {shapes}; {releases} releases in between",
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
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=ctx.child_timeout(120),
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        return Row("no CUDA context", "FAIL", last_line(done.stderr))
    report = json.loads(done.stdout.strip().splitlines()[-1])
    status = "PASS" if not any(report["contexts"]) else "FAIL"
    return Row("no CUDA context", status, f"contexts after probe: {report['contexts']}; "
               f"GPUs (name, bf16, free): {report['gpus']}")  # fmt: skip


def check_pinned(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU (pinned memory is CUDA only)")
    torch = ctx.torch
    from mlsharp.runtime.transfer import PAGE_SIZE, staging_bytes

    stats = getattr(torch.cuda, "host_memory_stats", None)

    def host_cached() -> int | None:
        if stats is None:
            return None
        figures = stats()  # pinned blocks PyTorch's caching host allocator owns
        return int(figures.get("allocated_bytes.current", 0) or 0)

    engine = ctx.engine(batch_size=4)
    before = host_cached()
    results = engine.predict_many([ctx.photos[0]] * 4, batch_size=4)
    held, pinned = engine._staging.nbytes, engine._staging.pinned_bytes
    expected = 4 * staging_bytes(
        {k: torch.from_numpy(v) if v is not None else None for k, v in _arrays(results[0]).items()}
    )
    after = host_cached()
    engine.memory_guard.release("idle")
    released = engine._staging.nbytes
    del engine, results
    ctx.free()
    grown = None if before is None or after is None else after - before
    sized = expected <= held < expected + 4 * PAGE_SIZE  # whole pages per photo
    ok = sized and pinned == held and released == 0 and (grown is None or grown < 16 * 2**20)
    return Row(
        "pinned staging",
        "PASS" if ok else "FAIL",
        f"batch of 4: staging {held / 2**20:.2f} MiB (results {expected / 2**20:.2f} MiB), "
        f"page-locked {pinned / 2**20:.2f} MiB, caching host allocator grew "
        f"{'?' if grown is None else f'{grown / 2**20:.1f} MiB'}, after release {released} B",
    )


def check_device_names(ctx: Context) -> Row:
    if not ctx.cuda:
        raise skip("no CUDA GPU")
    from mlsharp.device import resolve_device
    from mlsharp.errors import DeviceError

    outcomes = []
    for name in (f"cuda:{ctx.gpus}", "cuda:256"):
        try:
            outcomes.append(f"{name} -> {resolve_device(name)} (accepted)")
        except DeviceError as error:
            outcomes.append(f"{name} refused: {first_line(error)[:90]}")
    ok = all("refused" in o for o in outcomes) and resolve_device("cuda:0").index == 0
    return Row("device names", "PASS" if ok else "FAIL", "; ".join(outcomes))


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
    """The configurations to benchmark, the most telling first (the budget may end the list)."""
    if ctx.args.configs:
        return ctx.args.configs.split(",")
    if not ctx.cuda:
        return ["fp32"]
    bf16 = ["bf16+channels_last", "bf16+channels_last+cuda_graphs"] if ctx.bf16_native() else []
    return [*bf16, "fp32", "fp16+channels_last", *(["tf32"] if ctx.tf32() else [])]


def check_bench_runtime(ctx: Context) -> list[Row]:
    ctx.drop_base()  # each configuration runs in its own process and needs the memory
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
        warmup=0 if quick and not ctx.cuda else 1,  # the CPU smoke test: the code path only
        batch_runs=1 if quick else 2,
        batch_sizes=([] if quick else [1]) if not ctx.cuda else ([1, 4] if quick else [1, 8]),
    )
    needs = CONFIG_SECONDS.get(ctx.args.preset, CONFIG_SECONDS_DEFAULT)
    rows = []
    for config in bench_configs(ctx):
        name = f"bench {config}"
        if ctx.budget_spent() or ctx.time_left() < needs:
            rows.append(Row(name, "SKIP", f"not started: {ctx.time_left():.0f} s left"))
            continue
        print(f"  {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = bench.run_child(config_args(ctx, args, config), config, ctx.child_timeout(300))
        seconds = time.perf_counter() - start
        if "error" in result:
            sys.stderr.write(result.get("stderr", "")[-4000:])
            rows.append(Row(name, "FAIL", result["error"], seconds))
            continue
        ctx.bench.append(result)
        rows.append(Row(name, "PASS", bench_summary(result), seconds, data=result))
    print("", file=sys.stderr)
    if ctx.bench:
        bench.print_tables(ctx.bench, args)
    return rows


def config_args(ctx: Context, args: argparse.Namespace, config: str) -> argparse.Namespace:
    """bench_runtime's arguments for ``config``: on a GPU the fp32 references (seconds per
    forward at full size) get fewer runs and no batches; the goals are the fast configs'."""
    if not ctx.cuda or ctx.args.quick or config.split("+")[0] not in ("fp32", "tf32"):
        return args
    return argparse.Namespace(**{**vars(args), "runs": 5, "batch_sizes": [1]})


def bench_summary(result: dict[str, Any]) -> str:
    """One line of a bench_runtime result."""
    forward = statistics.median(result["samples"]["forward"]) * 1e3
    total = statistics.median(result["samples"]["total"]) * 1e3
    rates = "".join(
        f"{'OOM' if rate is None else f'{float(rate):.1f}'} img/s @{batch}, "
        for batch, rate in result["throughput"].items()
    )
    return (
        f"forward p50 {forward:.0f} ms, JPEG->.ply p50 {total:.0f} ms, {rates}"
        f"ready {result['ready_s']:.1f} s, peak {result['peak_gb']:.2f} GB ({result['peak_what']})"
    )


def check_bench_backends(ctx: Context) -> Row:
    script = REPO / "benchmarks" / "bench_backends.py"
    if not script.exists():
        raise skip("benchmarks/bench_backends.py is not in this tree yet")
    if ctx.time_left() < 60:
        raise skip(f"not started: {ctx.time_left():.0f} s left")
    helps = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
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
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=ctx.child_timeout(240),
        check=False,
    )
    sys.stderr.write(done.stdout[-6000:] + done.stderr[-3000:])
    last = last_line(done.stdout + done.stderr)
    return Row("bench_backends", "PASS" if done.returncode == 0 else "FAIL", last)


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
    if not ctx.cuda and ctx.args.quick:  # the code path, not a timing: a tenth of the splats
        gaussians = subsample(gaussians, 10)
    cameras = [camera_at(gaussians, size), *make_trajectory(gaussians, "orbit", frames, size)]
    scene = SceneTensors.from_gaussians(gaussians, ctx.device)
    background = torch.zeros(3)

    def timed(render: Callable[[Any], Any], views: list[Any]) -> tuple[float, list[Any]]:
        images = [render(views[0])]  # warm-up (kernels, allocator)
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)
        start = time.perf_counter()
        images += [render(camera) for camera in views[1:]]
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)
        return (time.perf_counter() - start) / (len(views) - 1), images

    rows = []
    budgets = {default_budget(ctx.device)} | ({BUDGETS["cpu"]} if ctx.cuda else set())
    for budget in sorted(budgets, reverse=True):

        def with_budget(camera: Any, budget: int = budget) -> Any:
            return rasterize_torch(scene, camera, background, budget=budget)

        # The device's own budget over every view; the CPU's on a GPU (slow: launch-bound,
        # shown for the difference) over one.
        own = budget == default_budget(ctx.device)
        seconds, _ = timed(with_budget, cameras if own else cameras[:2])
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
        seconds, images = timed(lambda c: rasterize_gsplat(scene, c, background), cameras)
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


def subsample(gaussians: Any, step: int) -> Any:
    """Every ``step``-th Gaussian of ``gaussians`` (spread over the whole scene)."""
    from dataclasses import replace

    picked = {
        name: getattr(gaussians, name)[::step]
        for name in ("positions", "scales", "rotations", "colors", "opacities")
    }
    return replace(gaussians, **picked, depth=None, metadata={})


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
    rates = [float(v) for r in ctx.bench for v in r["throughput"].values() if v is not None]
    rate = max(rates, default=0.0)
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
    ("device names", check_device_names),
    ("bench", check_bench_runtime),
    ("bench_backends", check_bench_backends),
    ("rasterizers", check_rasterizers),
    ("goals", check_goals),
]
#: Rows that cost nothing and so run even when the budget is spent.
FREE_CHECKS = {"environment", "goals"}


def run_checks(ctx: Context) -> list[Row]:
    """Every check in order, each isolated: an exception is that row's FAIL."""
    only = set(ctx.args.only.split(",")) if ctx.args.only else None
    for name, check in CHECKS:
        if only is not None and name not in only:
            ctx.add([Row(name, "SKIP", "not in --only")])
            continue
        if ctx.budget_spent() and name not in FREE_CHECKS:
            ctx.add([Row(name, "SKIP", f"time budget of {ctx.args.budget_s:g} s spent")])
            continue
        print(f"{name} ... ({ctx.elapsed():.0f} s)", file=sys.stderr, flush=True)
        ctx.running = name
        start = time.perf_counter()
        try:
            result = check(ctx)
            produced = result if isinstance(result, list) else [result]
        except Outcome as outcome:
            produced = [Row(name, outcome.status, outcome.result)]
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            produced = [Row(name, "FAIL", first_line(error))]
        if any(row.status != "SKIP" for row in produced):
            ctx.free()  # what the row left behind (a skipped row allocated nothing)
        seconds = time.perf_counter() - start
        for row in produced:
            row.seconds = row.seconds or seconds
        ctx.add(produced)
    return list(ctx.rows)


def environment(ctx: Context) -> dict[str, Any]:
    """What the report was measured on."""
    torch = ctx.torch
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "python": sys.version.split()[0],
        "preset": ctx.args.preset,
        "weights": "real" if ctx.real_weights else "random",
        "argv": sys.argv[1:],
        "gpus": [],
    }
    for index in range(ctx.gpus):
        with contextlib.suppress(Exception):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gb": round(props.total_memory / 1e9, 1),
                    "multiprocessors": props.multi_processor_count,
                }
            )
    with contextlib.suppress(Exception):
        info["cudnn"] = torch.backends.cudnn.version()
    for module in ("gsplat", "triton", "pynvml"):
        info[module] = importlib.util.find_spec(module) is not None
    return info


def write_report(ctx: Context, rows: list[Row], *, complete: bool) -> None:
    """The JSON report (``--json``), replaced atomically; written after every row."""
    if not ctx.args.json:
        return
    path = Path(ctx.args.json)
    report = {
        "environment": ctx.info,
        "complete": complete,
        "seconds": round(ctx.elapsed(), 1),
        "rows": [asdict(r) for r in rows],
    }
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps(report, indent=1, default=str))
        os.replace(temporary, path)
    except OSError as error:  # the table on stdout still comes
        print(f"cannot write the report {path}: {error}", file=sys.stderr)


def print_table(rows: list[Row], ctx: Context) -> None:
    torch = ctx.torch
    gpus = ctx.info.get("gpus") or []
    device = gpus[0]["name"] if gpus else ("CUDA GPU" if ctx.cuda else "CPU")
    weights = "real weights" if ctx.real_weights else "random weights"
    print(
        f"\n## gpu_check {time.strftime('%Y-%m-%d %H:%M')} — {device}, torch {torch.__version__}, "
        f"preset `{ctx.args.preset}` ({weights}), {ctx.elapsed():.0f} s\n"
    )
    print("| check | status | result | s |")
    print("|---|---|---|---|")
    for row in rows:
        result = " ".join(row.result.replace("|", "/").split())
        print(f"| {row.name} | {row.status} | {result} | {row.seconds:.1f} |")
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "WARN", "SKIP")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)


def finish(ctx: Context, *, complete: bool) -> list[Row] | None:
    """Report once (the main thread at the end, or the watchdog at the deadline): the
    JSON and the table. ``None`` when the other one already did."""
    with ctx.report_lock:
        if ctx.reported:
            return None
        ctx.reported = True
        rows = list(ctx.rows)
        if not complete and ctx.running is not None:
            rows.append(
                Row(ctx.running, "FAIL", f"cut short at the deadline ({ctx.args.deadline_s:g} s)")
            )
        write_report(ctx, rows, complete=complete)
        print_table(rows, ctx)
        return rows


def start_watchdog(ctx: Context) -> threading.Timer:
    """At the deadline: report what is done and end the process (exit status 3)."""

    def expire() -> None:
        if finish(ctx, complete=False) is not None:
            sys.stderr.flush()
            os._exit(3)

    timer = threading.Timer(max(0.0, ctx.time_left()), expire)
    timer.daemon = True
    timer.start()
    return timer


def main() -> int:
    from mlsharp.choices import PRESET_CHOICES  # no torch: a bad option fails at once

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sharp", choices=PRESET_CHOICES)
    parser.add_argument("--checkpoint", help="real weights (default: random at real scale)")
    parser.add_argument("--configs", help="bench_runtime configurations (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller frames")
    parser.add_argument("--only", help="run only these checks (comma-separated row names)")
    parser.add_argument(
        "--budget-s", type=float, default=400.0, help="start no row after this (default 400)"
    )
    parser.add_argument(
        "--deadline-s", type=float, default=465.0, help="report and exit here (default 465)"
    )
    parser.add_argument("--pytest-timeout", type=float, default=150.0)
    parser.add_argument("--json", help="also write the report as JSON here (after every row)")
    args = parser.parse_args()
    if args.only:
        unknown = set(args.only.split(",")) - {name for name, _ in CHECKS}
        if unknown:
            parser.error(f"unknown check(s) {sorted(unknown)}; known: {[n for n, _ in CHECKS]}")
    ctx = Context(args)
    watchdog = start_watchdog(ctx)
    try:
        run_checks(ctx)
    finally:
        watchdog.cancel()
        shutil.rmtree(ctx.workdir, ignore_errors=True)  # the random weights (GBs)
    rows = finish(ctx, complete=True)
    if rows is None:  # the watchdog reported and is ending the process
        time.sleep(60)
        return 3
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
