"""``mlsharp autotune``: find the fastest way to run the real network on this device
whose output stays within tolerance of the fp32 reference.

For each candidate :class:`~mlsharp.runtime.options.RuntimeOptions` valid on the device
the engine is loaded with the real architecture and checkpoint and run on the same input
(a deterministic synthetic photo, or the user's): ``warmup`` untimed predictions, then the
median of ``runs`` timed ones (``Engine.predict`` returns host arrays, so each timing is
synchronised end to end), with the peak memory of the whole candidate
(:mod:`mlsharp.runtime.peak`). Its Gaussians are compared with the fp32 output
(:mod:`mlsharp.runtime.accuracy`). The search has three greedy stages: every precision
(with and without channels-last); the float32 post-processing on the device on top of the
best so far; then ``compile`` / ``cuda_graphs`` on top of the best so far.
A candidate that cannot run (out of memory, unsupported, a compile error) is recorded with
its reason and skipped; only a failing fp32 reference stops the run.

:func:`select_best` picks the fastest candidate within the thresholds; fp32 always
qualifies, and a fast path must beat it by :data:`MIN_SPEEDUP` to be preferred (a gain
within timing noise is not worth an approximation).

Results are cached as JSON in ``cache_dir()/autotune/`` (``$MLSHARP_CACHE``), one file
per :class:`TuneKey` (device and its model, torch version, checkpoint SHA-256, preset,
resolution). A new key tunes again; ``force`` re-tunes; an unreadable file is ignored
with a warning and replaced (atomically). :func:`cached_or_tuned` is what ``mlsharp serve
--autotune`` uses.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsharp.choices import Backend
from mlsharp.errors import ConfigError
from mlsharp.runtime.accuracy import PropertyError, compare_gaussians, threshold_failures
from mlsharp.runtime.options import RuntimeOptions

if TYPE_CHECKING:
    import torch

    from mlsharp.config import Settings
    from mlsharp.gaussians import Gaussians
    from mlsharp.imaging import LoadedImage
    from mlsharp.runtime.devices import SystemProbe

__all__ = [
    "CACHE_FORMAT",
    "MIN_SPEEDUP",
    "AutotuneResult",
    "Measurement",
    "TuneKey",
    "acceleration_candidates",
    "autotune",
    "cache_file",
    "cached_or_tuned",
    "cached_results",
    "load_cached",
    "postprocess_candidates",
    "precision_candidates",
    "save_result",
    "select_best",
    "server_options",
    "synthetic_photo",
    "tune_key",
]

log = logging.getLogger("mlsharp.autotune")

CACHE_FORMAT = "mlsharp-autotune-v1"
#: A fast path is chosen over fp32 only when it is at least this much faster (3 %):
#: smaller differences are within run-to-run noise and not worth an approximation.
MIN_SPEEDUP = 1.03
#: Size of the synthetic input photo (the network resizes it to its internal size).
SYNTHETIC_SIZE = (1024, 768)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneKey:
    """What an autotune result depends on; a different key means tuning again.

    Attributes:
        device: ``cpu``, ``cuda:N`` or ``mps``.
        device_name: the GPU model and architecture, or CPU model and thread count.
        torch: ``torch.__version__`` (kernels and compilers change between releases).
        checkpoint_sha256: digest of the weights file.
        preset: network preset.
        resolution: internal resolution the network runs at.
        batch_size: photos per forward the candidates were timed at (what is fastest, and
            whether it fits, changes with it; ``mlsharp serve`` tunes at the batch size it
            serves).
    """

    device: str
    device_name: str
    torch: str
    checkpoint_sha256: str
    preset: str
    resolution: int
    batch_size: int = 1
    #: The other backends' runtime versions measured with (``openvino 2026.4.1, ...``).
    runtimes: str = ""

    def file_name(self) -> str:
        """The cache file name: a digest of the whole key (a batch size of 1 and no other
        runtimes are left out, so results cached before the key had them stay valid)."""
        fields = asdict(self)
        if fields["batch_size"] == 1:
            del fields["batch_size"]
        if not fields["runtimes"]:
            del fields["runtimes"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"{hashlib.sha256(blob).hexdigest()[:24]}.json"


@dataclass
class Measurement:
    """What one candidate did.

    Attributes:
        options: the candidate.
        reference: this is the fp32 reference (always qualifies).
        error: why it could not run (``None`` when it ran).
        times: seconds per photo of each timed prediction (end to end: preprocess,
            forward, post-processing, device-to-host copy; a batch's time divided by its
            photos).
        forward_times: seconds per photo of the network forward alone in each timed run,
            when the engine reports them.
        peak_memory: bytes (see ``memory_kind`` and :mod:`mlsharp.runtime.peak`).
        memory_kind: how ``peak_memory`` was measured.
        errors: per-property error against the reference output.
        failures: thresholds exceeded (empty: within tolerance).
    """

    options: RuntimeOptions
    reference: bool = False
    error: str | None = None
    times: list[float] = field(default_factory=list)
    forward_times: list[float] = field(default_factory=list)
    peak_memory: int | None = None
    memory_kind: str | None = None
    errors: dict[str, PropertyError] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        """The candidate ran to the end."""
        return self.error is None and bool(self.times)

    @property
    def median_s(self) -> float | None:
        """Median seconds per prediction."""
        return statistics.median(self.times) if self.times else None

    @property
    def forward_median_s(self) -> float | None:
        """Median seconds of the network forward, if reported."""
        return statistics.median(self.forward_times) if self.forward_times else None

    @property
    def qualifies(self) -> bool:
        """Ran and is within tolerance (the reference always is)."""
        return self.ran and (self.reference or not self.failures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "options": self.options.to_dict(),
            "label": self.options.label(),
            "reference": self.reference,
            "error": self.error,
            "times": self.times,
            "forward_times": self.forward_times,
            "median_s": self.median_s,
            "peak_memory": self.peak_memory,
            "memory_kind": self.memory_kind,
            "errors": {name: e.to_dict() for name, e in self.errors.items()},
            "failures": self.failures,
            "qualifies": self.qualifies,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict` (derived fields are recomputed)."""
        return cls(
            options=RuntimeOptions.from_dict(data["options"]),
            reference=bool(data.get("reference", False)),
            error=data.get("error"),
            times=[float(t) for t in data.get("times", [])],
            forward_times=[float(t) for t in data.get("forward_times", [])],
            peak_memory=None if data.get("peak_memory") is None else int(data["peak_memory"]),
            memory_kind=data.get("memory_kind"),
            errors={k: PropertyError.from_dict(v) for k, v in data.get("errors", {}).items()},
            failures=[str(f) for f in data.get("failures", [])],
        )


@dataclass
class AutotuneResult:
    """The outcome of a tuning run (fresh or from the cache).

    Attributes:
        key: what the result is valid for.
        best: the options chosen (see :func:`select_best`).
        measurements: every candidate, in the order tried (the reference first).
        created_at: when it was measured (ISO 8601, UTC).
        runs: timed runs per candidate.
        warmup: untimed runs per candidate.
        image: what input was used.
        from_cache: read from the cache instead of measured now.
        path: the cache file.
    """

    key: TuneKey
    best: RuntimeOptions
    measurements: list[Measurement]
    created_at: str
    runs: int
    warmup: int
    image: str
    from_cache: bool = False
    path: Path | None = None

    @property
    def reference(self) -> Measurement:
        """The fp32 measurement."""
        return next(m for m in self.measurements if m.reference)

    def speedup(self, measurement: Measurement) -> float | None:
        """How many times faster than fp32 ``measurement`` ran."""
        ref, mine = self.reference.median_s, measurement.median_s
        return ref / mine if ref and mine else None

    def best_measurement(self) -> Measurement:
        """The measurement of :attr:`best`."""
        return next(
            (m for m in self.measurements if m.options == self.best and m.ran), self.reference
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in the cache (and printed by ``--json``)."""
        return {
            "format": CACHE_FORMAT,
            "key": asdict(self.key),
            "best": self.best.to_dict(),
            "best_label": self.best.label(),
            "speedup": self.speedup(self.best_measurement()),
            "created_at": self.created_at,
            "runs": self.runs,
            "warmup": self.warmup,
            "image": self.image,
            "measurements": [m.to_dict() for m in self.measurements],
            "from_cache": self.from_cache,
            "path": str(self.path) if self.path else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: Path | None = None) -> AutotuneResult:
        """Parse a cache file's JSON; raises ``ValueError``/``KeyError``/``TypeError`` if bad."""
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        measurements = [Measurement.from_dict(m) for m in data["measurements"]]
        if sum(m.reference for m in measurements) != 1:
            raise ValueError("exactly one reference measurement expected")
        return cls(
            key=TuneKey(**data["key"]),
            best=RuntimeOptions.from_dict(data["best"]),
            measurements=measurements,
            created_at=str(data["created_at"]),
            runs=int(data["runs"]),
            warmup=int(data["warmup"]),
            image=str(data["image"]),
            from_cache=True,
            path=path,
        )


# --------------------------------------------------------------------------------------
# Candidates and selection (pure)
# --------------------------------------------------------------------------------------


def precision_candidates(
    device_type: str, *, tf32: bool, bf16: bool, resolution: int | None = None
) -> list[RuntimeOptions]:
    """Stage 1: every precision the device offers, each with and without channels-last.

    ``tf32``: the GPU has TF32 tensor cores. ``bf16``: the device computes bf16 natively
    (on the CPU, emulated bf16 is slower than fp32, so it is not tried). The fp32
    reference comes first.
    """
    if device_type == "cuda":
        precisions = ["fp32", *(["tf32"] if tf32 else []), *(["bf16"] if bf16 else []), "fp16"]
    elif device_type == "mps":
        precisions = ["fp32", "fp16", *(["bf16"] if bf16 else [])]
    else:
        precisions = ["fp32", *(["bf16"] if bf16 else [])]
    layouts = (False,) if device_type == "mps" else (False, True)
    return [
        RuntimeOptions(precision=p, channels_last=cl, resolution=resolution)  # type: ignore[arg-type]
        for p in precisions
        for cl in layouts
    ]


def backend_candidates(
    backends: Sequence[Backend], *, bf16: bool, resolution: int | None = None
) -> list[RuntimeOptions]:
    """Stage 1b (CPU): the other backends, fp32 and int8 weights each, and OpenVINO's bf16
    (with float and with int8 weights: the least memory) when the CPU computes bf16
    natively. Their errors go through the same guard."""
    candidates = []
    for backend in backends:
        candidates.append(RuntimeOptions(backend=backend, resolution=resolution))
        candidates.append(RuntimeOptions(backend=backend, int8_weights=True, resolution=resolution))
        if backend == "openvino" and bf16:
            candidates += [
                RuntimeOptions(backend=backend, precision="bf16", resolution=resolution),
                RuntimeOptions(
                    backend=backend, precision="bf16", int8_weights=True, resolution=resolution
                ),
            ]
    return candidates


def postprocess_candidates(base: RuntimeOptions) -> list[RuntimeOptions]:
    """Stage 2: the float32 covariance decomposition on the device, on top of the best
    stage-1 options (every device)."""
    return [] if base.fast_postprocess else [replace(base, fast_postprocess=True)]


def acceleration_candidates(
    base: RuntimeOptions, device_type: str, *, compile: bool
) -> list[RuntimeOptions]:
    """Stage 3: ``torch.compile`` and CUDA graphs on top of the best options so far (torch)."""
    candidates: list[RuntimeOptions] = []
    if base.backend != "torch":
        return candidates
    if compile:
        candidates.append(replace(base, compile=True))
    if device_type == "cuda":
        candidates.append(replace(base, cuda_graphs=True))
        if compile:
            candidates.append(replace(base, compile=True, cuda_graphs=True))
    return candidates


def select_best(
    measurements: Sequence[Measurement], min_speedup: float = MIN_SPEEDUP
) -> Measurement:
    """The fastest qualifying measurement; the fp32 reference unless a qualifying fast
    path is at least ``min_speedup`` times faster.

    Raises:
        ValueError: there is no reference measurement that ran.
    """
    reference = next((m for m in measurements if m.reference and m.ran), None)
    if reference is None:
        raise ValueError("no fp32 reference measurement to compare with")
    ref_time = reference.median_s
    assert ref_time is not None  # ran
    best = reference
    for m in measurements:
        if m.reference or not m.qualifies:
            continue
        mine = m.median_s
        assert mine is not None
        if ref_time / mine >= min_speedup and mine < (best.median_s or float("inf")):
            best = m
    return best


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``cache_dir()/autotune`` (honours ``$MLSHARP_CACHE``)."""
    from mlsharp.weights import cache_dir

    return cache_dir() / "autotune"


def cache_file(key: TuneKey) -> Path:
    """Where the result for ``key`` is stored."""
    return cache_root() / key.file_name()


def _read(path: Path) -> AutotuneResult:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return AutotuneResult.from_dict(data, path=path)


def load_cached(key: TuneKey) -> AutotuneResult | None:
    """The cached result for ``key``, or ``None`` (absent, stale or unreadable).

    An unreadable file is reported as a warning and left for :func:`save_result` to
    replace.
    """
    path = cache_file(key)
    if not path.exists():
        return None
    try:
        result = _read(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable autotune cache file %s (%s); tuning again", path, e)
        return None
    if result.key != key:
        log.info("autotune cache file %s is for another key; tuning again", path)
        return None
    return result


def save_result(result: AutotuneResult) -> Path:
    """Write ``result`` to its cache file atomically; returns the path."""
    from mlsharp._atomic import atomic_write

    path = cache_file(result.key)
    data = result.to_dict()
    data["from_cache"] = False
    data["path"] = None
    atomic_write(path, [json.dumps(data, indent=1).encode()])
    result.path = path
    return path


def cached_results() -> list[AutotuneResult]:
    """Every readable result in the cache, newest first (unreadable files are skipped)."""
    root = cache_root()
    results = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else ():
        try:
            results.append(_read(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.debug("skipping unreadable autotune cache file %s: %s", path, e)
    return sorted(results, key=lambda r: r.created_at, reverse=True)


# --------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------


def synthetic_photo(width: int = SYNTHETIC_SIZE[0], height: int = SYNTHETIC_SIZE[1]) -> LoadedImage:
    """A deterministic photo-like image: sky gradient, a textured ground plane receding to
    a horizon, a few discs in front (depth edges) and fine noise (high frequencies)."""
    from mlsharp.imaging import LoadedImage, focal_length_px

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    horizon = 0.45
    sky = np.stack([0.45 + 0.3 * v, 0.6 + 0.25 * v, 0.95 - 0.1 * v], axis=-1)
    # Ground: a checkerboard in perspective (its frequency grows towards the horizon).
    depth = 1.0 / np.maximum(v - horizon, 1e-3)
    checker = ((np.floor((u - 0.5) * depth * 4) + np.floor(depth * 2)) % 2).astype(np.float32)
    ground = np.stack([0.35 + 0.25 * checker, 0.3 + 0.2 * checker, 0.2 + 0.1 * checker], axis=-1)
    image = np.where((v > horizon)[..., None], ground, sky)
    for cx, cy, r, colour in (
        (0.3, 0.6, 0.12, (0.8, 0.2, 0.2)),
        (0.7, 0.55, 0.08, (0.2, 0.3, 0.8)),
    ):
        inside = (u - cx) ** 2 + ((v - cy) * height / width) ** 2 < r**2
        shade = 0.7 + 0.3 * (1 - v)
        image[inside] = np.asarray(colour, dtype=np.float32) * shade[inside][:, None]
    noise = np.random.default_rng(0).normal(0.0, 0.03, image.shape).astype(np.float32)
    pixels = np.clip((image + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return LoadedImage(
        pixels=np.ascontiguousarray(pixels),
        focal_px=focal_length_px(30.0, width, height),
        focal_mm_35=30.0,
        focal_source="default",
        name=f"synthetic {width}x{height}",
    )


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def _describe_failure(error: BaseException) -> str:
    """One line saying why a candidate could not run."""
    name = type(error).__name__
    text = " ".join(str(error).split())
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return f"out of memory ({text[:160]})" if text else "out of memory"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{name}: {text}" if text else name


def _release(device: torch.device, options: RuntimeOptions) -> None:
    """Give back what a candidate's engine held before the next one loads."""
    import torch

    gc.collect()
    if options.compile:
        dynamo = getattr(torch, "_dynamo", None)
        if dynamo is not None:
            dynamo.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class _Tuner:
    """Loads and measures candidates on one device with one input."""

    def __init__(
        self,
        checkpoint: Path,
        preset: str,
        device: torch.device,
        photo: LoadedImage,
        *,
        runs: int,
        warmup: int,
        bar: Any,
        batch_size: int = 1,
    ) -> None:
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.preset = preset
        self.device = device
        self.photo = photo
        self.runs = runs
        self.warmup = warmup
        self.bar = bar
        self.reference_output: Gaussians | None = None

    def measure(self, options: RuntimeOptions, *, reference: bool = False) -> Measurement:
        """Run one candidate; a failure is recorded, except for the reference."""
        from mlsharp.runtime.peak import PeakMemory

        self.bar.set_postfix_str(options.label(), refresh=True)
        measurement = Measurement(options=options, reference=reference)
        # The reference is the process's first model: its first prediction also pays the
        # process-wide start-up (thread pools, allocator arenas, kernel selection) that no
        # later candidate pays, so it always gets at least one untimed run.
        warmup = max(self.warmup, 1) if reference else self.warmup
        outputs: list[Gaussians] = []  # the first and the latest prediction
        steps = 0
        engine = None
        failure = None
        try:
            with PeakMemory(self.device) as peak:
                engine = self._load(options)
                peak.sample()  # the weights, before the engine resets the counter
                batch = self.batch_size
                for step in range(warmup + self.runs):
                    start = time.perf_counter()
                    gaussians = engine.predict_many([self.photo] * batch, batch_size=batch)[0]
                    peak.sample()
                    if step >= warmup:
                        measurement.times.append((time.perf_counter() - start) / batch)
                        forward = getattr(gaussians.metadata.get("timings"), "inference", None)
                        if forward:
                            measurement.forward_times.append(float(forward))
                    outputs = [outputs[0] if outputs else gaussians, gaussians]
                    steps += 1
                    self.bar.update(1)
        except Exception as error:  # a candidate may fail in any layer (OOM, compiler...)
            if reference:
                raise
            log.debug("autotune candidate %s failed", options.label(), exc_info=True)
            failure = _describe_failure(error)
        finally:
            engine = None  # drop the model before the next candidate loads
        # Outside the except block, so the traceback (and the tensors its frames hold)
        # is gone before memory is released.
        _release(self.device, options)
        if failure is not None:
            measurement.error = failure
            measurement.times.clear()
            measurement.forward_times.clear()
            self.bar.update(warmup + self.runs - steps)
            return measurement
        first, last = outputs
        measurement.peak_memory, measurement.memory_kind = peak.peak, peak.kind
        if reference:
            # The reference's first output is what every candidate is compared with; its
            # own last run against it shows the run-to-run noise of fp32.
            self.reference_output = first
        assert self.reference_output is not None
        measurement.errors = compare_gaussians(self.reference_output, last)
        measurement.failures = threshold_failures(measurement.errors)
        return measurement

    def _load(self, options: RuntimeOptions) -> Any:
        from mlsharp.engine import Engine

        return Engine.load(
            self.checkpoint,
            preset=self.preset,
            device=str(self.device),
            download=False,
            progress=False,
            options=options,
        )


def _canonical_device(device: str) -> torch.device:
    """Resolve ``auto``/``cuda`` to a concrete device with an index (``cuda:0``)."""
    import torch

    from mlsharp.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _capabilities(probe: SystemProbe, device: torch.device) -> tuple[bool, bool]:
    """(tf32, bf16) support of ``device`` from the probe."""
    if device.type == "cuda":
        gpu = next((g for g in probe.gpus if g.index == (device.index or 0)), None)
        return (bool(gpu and gpu.tf32), bool(gpu and gpu.bf16))
    if device.type == "cpu":
        return False, bool(probe.cpu.bf16_native)
    import platform

    from mlsharp.runtime.precision import mps_bf16_supported

    return False, mps_bf16_supported(platform.mac_ver()[0])  # MPS: bf16 from macOS 14


def tune_key(
    checkpoint: Path,
    *,
    preset: str,
    device: torch.device,
    resolution: int | None,
    probe: SystemProbe,
    batch_size: int = 1,
) -> TuneKey:
    """The cache key of tuning ``checkpoint`` with ``preset`` on ``device`` at ``batch_size``."""
    import torch

    from mlsharp.model.config import preset as preset_config
    from mlsharp.runtime.devices import device_label
    from mlsharp.weights import memoized_sha256

    try:
        native = preset_config(preset).internal_resolution
    except ValueError as e:
        raise ConfigError(str(e)) from None
    name = str(device) if device.type == "cuda" else device.type
    return TuneKey(
        device=name,
        device_name=device_label(probe, name),
        torch=str(torch.__version__),
        checkpoint_sha256=memoized_sha256(checkpoint),
        preset=preset,
        resolution=int(resolution or native),
        batch_size=batch_size,
        runtimes=_runtime_versions(),
    )


def _runtime_versions() -> str:
    """``openvino X, onnxruntime Y`` for the installed optional runtimes."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("openvino", "onnxruntime"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _backends_to_tune(backend: Backend | None, device: torch.device) -> list[Backend]:
    """The non-torch backends autotune measures: on a CPU every installed one for
    ``auto``/``None``, the one named otherwise; none on GPUs (torch runs them)."""
    from mlsharp.backends.select import PACKAGES, installed, require

    if backend in (None, "auto"):
        return [b for b in PACKAGES if installed(b)] if device.type == "cpu" else []
    if backend == "torch":
        return []
    require(backend)
    if device.type != "cpu":
        raise ConfigError(
            f"autotune measures {backend} with --device cpu (its own device: --backend-device)"
        )
    return [backend]


def autotune(
    checkpoint: str | Path | None = None,
    *,
    preset: str = "sharp",
    device: str = "auto",
    resolution: int | None = None,
    runs: int = 5,
    warmup: int = 1,
    image: str | Path | None = None,
    force: bool = False,
    compile: bool | None = None,
    candidates: Sequence[RuntimeOptions] | None = None,
    download: bool = True,
    progress: bool = False,
    batch_size: int = 1,
    backend: Backend | None = None,
    backend_device: str | None = None,
) -> AutotuneResult:
    """Tune (or read the cached tuning of) ``checkpoint`` on ``device``.

    Args:
        checkpoint: path or URL; ``None``: ``$MLSHARP_CHECKPOINT`` or the default.
        preset: network preset.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        resolution: internal resolution to tune at (``None``: the preset's).
        runs: timed predictions per candidate (the median counts).
        warmup: untimed predictions per candidate first (compilation, caches).
        image: a photo to tune on instead of the synthetic one.
        force: measure even when a cached result exists.
        compile: try ``torch.compile``; ``None``: on CUDA only (on the CPU it needs a C++
            compiler and takes minutes).
        candidates: measure exactly these (plus the fp32 reference) instead of the
            two-stage search.
        download: allow downloading the default checkpoint.
        progress: show a progress bar on stderr.
        batch_size: photos per forward to time the candidates at (copies of the input).
        backend: ``auto``/``None`` (every installed backend on a CPU), ``torch`` (torch
            only) or one of ``openvino``/``onnxruntime`` (that one besides torch).
        backend_device: the device of those backends (see ``RuntimeOptions``).

    Raises:
        ConfigError: bad ``runs``/``warmup``/``preset``; CheckpointError, DeviceError,
        InvalidImage as the engine and image loader raise them, also when the fp32
        reference itself cannot run.
    """
    from mlsharp.runtime.devices import probe_system
    from mlsharp.weights import resolve_checkpoint

    if runs < 1:
        raise ConfigError(f"--runs must be at least 1, not {runs}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, not {warmup}")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, not {batch_size}")
    path = resolve_checkpoint(checkpoint, download=download, progress=progress)
    torch_device = _canonical_device(device)
    probe = probe_system(query_driver=False)
    key = tune_key(
        path,
        preset=preset,
        device=torch_device,
        resolution=resolution,
        probe=probe,
        batch_size=batch_size,
    )
    if not force:
        cached = load_cached(key)
        if cached is not None:
            return cached

    photo = _input_image(image)
    reference = RuntimeOptions(resolution=resolution)
    if candidates is not None:
        stage1 = [reference, *(c for c in candidates if c != reference)]
    else:
        tf32, bf16 = _capabilities(probe, torch_device)
        stage1 = precision_candidates(
            torch_device.type, tf32=tf32, bf16=bf16, resolution=resolution
        )
        stage1 += [
            replace(c, backend_device=backend_device)
            for c in backend_candidates(
                _backends_to_tune(backend, torch_device), bf16=bf16, resolution=resolution
            )
        ]
    use_compile = torch_device.type == "cuda" if compile is None else compile
    per_candidate = warmup + runs

    from tqdm import tqdm

    with tqdm(
        total=len(stage1) * per_candidate + (warmup == 0),  # the reference's extra warm-up
        desc="autotune",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        tuner = _Tuner(
            path,
            preset,
            torch_device,
            photo,
            runs=runs,
            warmup=warmup,
            bar=bar,
            batch_size=batch_size,
        )
        measurements = [tuner.measure(stage1[0], reference=True)]
        measurements += [tuner.measure(options) for options in stage1[1:]]
        if candidates is None:
            # Each later stage builds on the best options found so far (a greedy search:
            # the full product of every switch would be dozens of model loads).
            for stage in (
                postprocess_candidates,
                lambda base: acceleration_candidates(base, torch_device.type, compile=use_compile),
            ):
                more = stage(select_best(measurements).options)
                bar.total = (bar.total or 0) + len(more) * per_candidate
                bar.refresh()
                measurements += [tuner.measure(options) for options in more]
    result = AutotuneResult(
        key=key,
        best=select_best(measurements).options,
        measurements=measurements,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        runs=runs,
        warmup=warmup,
        image=photo.name,
    )
    try:
        save_result(result)
    except OSError as e:  # a read-only cache costs a re-tune next time, not this result
        log.warning("cannot cache the autotune result in %s: %s", cache_root(), e)
    return result


def _input_image(image: str | Path | None) -> LoadedImage:
    if image is None:
        return synthetic_photo()
    from mlsharp.imaging import load_image

    return load_image(image)


def cached_or_tuned(
    checkpoint: str | Path | None = None,
    *,
    preset: str = "sharp",
    device: str = "auto",
    resolution: int | None = None,
    runs: int = 5,
    force: bool = False,
    download: bool = True,
    progress: bool = False,
    batch_size: int = 1,
) -> RuntimeOptions:
    """The tuned options for this machine: from the cache, or measured now and cached.

    What ``mlsharp serve --autotune`` calls at start-up; see :func:`autotune`.
    """
    result = autotune(
        checkpoint,
        preset=preset,
        device=device,
        resolution=resolution,
        runs=runs,
        force=force,
        download=download,
        progress=progress,
        batch_size=batch_size,
    )
    if result.from_cache:
        log.info("autotune: using cached %s (%s)", result.best.label(), result.path)
    else:
        log.info("autotune: chose %s (cached in %s)", result.best.label(), result.path)
    return result.best


def server_options(settings: Settings, *, progress: bool = False) -> RuntimeOptions:
    """The runtime options ``mlsharp serve`` runs with.

    Without ``settings.autotune``: the settings' own (:meth:`Settings.runtime_options`).
    With it: the cached (or, when there is none, freshly measured) choice for the
    settings' device, checkpoint, preset and resolution, timed at the batch size the
    server runs (:func:`serving_batch_size`); the batch size option stays the settings'.
    """
    options = settings.runtime_options()
    if not settings.autotune:
        return options
    tuned = cached_or_tuned(
        settings.checkpoint,
        preset=settings.preset,
        device=settings.device,
        resolution=settings.resolution,
        download=not settings.offline,
        progress=progress,
        batch_size=serving_batch_size(settings),
    )
    return replace(tuned, batch_size=options.batch_size)


def serving_batch_size(settings: Settings) -> int:
    """The photos per forward ``mlsharp serve`` runs under load: its batch size, else as
    many as its worker threads can bring together (up to the memory estimate's cap)."""
    from mlsharp.runtime.memory import MAX_ESTIMATED_BATCH

    if settings.batch_size:
        return settings.batch_size
    return max(1, min(settings.workers, MAX_ESTIMATED_BATCH))
