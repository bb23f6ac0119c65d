"""Which backend runs the forward, whether it can, and building its runtime.

``auto`` (the default) resolves as follows (docs/hardware.md):

1. the torch device is a GPU (CUDA, ROCm, MPS): ``torch``;
2. on a CPU, when ``mlsharp autotune`` measured other backends for this machine,
   checkpoint, preset and resolution: the fastest backend whose output passed the
   accuracy guard at the requested precision (at least :data:`MIN_SPEEDUP` faster
   than torch, else torch);
3. otherwise ``torch``: without a measurement on this machine, the reference path.

``openvino`` and ``onnxruntime`` run the forward on their own device (``backend_device``);
the pre- and post-processing around it runs on the CPU with torch.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsharp.choices import BACKEND_CHOICES, Backend
from mlsharp.errors import ConfigError
from mlsharp.runtime.options import RuntimeOptions

if TYPE_CHECKING:
    import torch

    from mlsharp.backends.base import ForwardRuntime
    from mlsharp.model.config import SharpConfig

log = logging.getLogger("mlsharp.backends")

#: The Python package each optional backend imports, and the extra that installs it.
PACKAGES: dict[Backend, tuple[str, str]] = {
    "openvino": ("openvino", "openvino"),
    "onnxruntime": ("onnxruntime", "onnx"),
}
#: Precisions each backend computes in.
PRECISIONS: dict[Backend, tuple[str, ...]] = {
    "torch": ("fp32", "tf32", "bf16", "fp16"),
    "openvino": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32",),
}
#: Options only the torch runtime has.
TORCH_ONLY = ("channels_last", "compile", "cuda_graphs")


@dataclass(frozen=True)
class BackendChoice:
    """What ``auto`` (or an explicit choice) resolved to, and why (for ``doctor``)."""

    backend: Backend
    reason: str


def installed(backend: Backend) -> bool:
    """The backend's package can be imported (torch always can)."""
    if backend not in PACKAGES:
        return backend == "torch"
    return importlib.util.find_spec(PACKAGES[backend][0]) is not None


def require(backend: Backend) -> None:
    """Raise the one-line :class:`ConfigError` naming the pip command when missing (or
    for a name that is no backend, e.g. from an old cache file)."""
    if backend not in PACKAGES and backend != "torch":
        raise ConfigError(f"unknown backend {backend!r}; choose {', '.join(BACKEND_CHOICES)}")
    if backend in PACKAGES and not installed(backend):
        package, extra = PACKAGES[backend]
        raise ConfigError(
            f"the {backend} backend needs the {package} package, which is not installed: "
            f'pip install "mlsharp[{extra}]"'
        )


def check_backend_options(options: RuntimeOptions, device: torch.device) -> None:
    """Raise :class:`ConfigError` for options the (resolved) backend cannot run."""
    backend = options.backend
    if backend == "torch":
        if options.int8_weights:
            raise ConfigError(
                "int8 weights need --backend openvino or onnxruntime (torch runs float weights)"
            )
        if options.backend_device:
            raise ConfigError("--backend-device is for openvino and onnxruntime; use --device")
        return
    require(backend)
    if device.type != "cpu":
        raise ConfigError(
            f"the {backend} backend runs the network on its own device (--backend-device); "
            f"--device must be cpu or auto, not {device}"
        )
    for name in TORCH_ONLY:
        if getattr(options, name):
            raise ConfigError(f"{name} is a torch option; the {backend} backend has no such mode")
    if options.precision not in PRECISIONS[backend]:
        raise ConfigError(
            f"precision {options.precision} is not offered by the {backend} backend; choose "
            f"{', '.join(PRECISIONS[backend])}"
        )


def choose_backend(
    options: RuntimeOptions,
    device: torch.device,
    *,
    checkpoint: Path | None,
    preset: str,
) -> BackendChoice:
    """Resolve ``options.backend`` (``auto`` or a name) to a concrete backend."""
    if options.backend != "auto":
        return BackendChoice(options.backend, "asked for")
    if device.type != "cpu":
        return BackendChoice("torch", f"{device.type} device: torch runs GPUs directly")
    measured = _tuned_choice(options, device, checkpoint=checkpoint, preset=preset)
    if measured is not None:
        return measured
    return BackendChoice(
        "torch",
        "CPU without an autotune measurement of openvino/onnxruntime for this checkpoint: "
        "the reference path (run `mlsharp autotune` to measure them)",
    )


def _tuned_choice(
    options: RuntimeOptions, device: torch.device, *, checkpoint: Path | None, preset: str
) -> BackendChoice | None:
    """The fastest backend autotune measured within the guard at this precision."""
    from mlsharp.runtime.autotune import MIN_SPEEDUP, cache_root, load_cached, tune_key

    root = cache_root()
    if checkpoint is None or not root.is_dir() or not any(root.glob("*.json")):
        return None  # nothing measured on this machine: no digest to compute
    from mlsharp.runtime.devices import probe_system

    key = tune_key(
        checkpoint,
        preset=preset,
        device=device,
        resolution=options.resolution,
        probe=probe_system(query_driver=False),
    )
    result = load_cached(key)
    if result is None:
        return None
    same = [
        m
        for m in result.measurements
        if m.qualifies
        and m.options.precision == options.precision
        and m.options.int8_weights == options.int8_weights
        and installed(m.options.backend)
    ]
    torch_runs = [m for m in same if m.options.backend == "torch" and m.median_s]
    others = [m for m in same if m.options.backend != "torch" and m.median_s]
    if not torch_runs or not others:
        return None
    base = min(m.median_s or 0.0 for m in torch_runs)
    best = min(others, key=lambda m: m.median_s or float("inf"))
    speedup = base / (best.median_s or float("inf"))
    if speedup < MIN_SPEEDUP:
        return BackendChoice("torch", f"autotune ({result.created_at}): no backend beat torch")
    return BackendChoice(
        best.options.backend,
        f"autotune ({result.created_at}) measured {best.options.label()} {speedup:.2f}x "
        f"torch {options.precision}, within the accuracy guard",
    )


def resolve_options(
    options: RuntimeOptions, device: torch.device, *, checkpoint: Path | None, preset: str
) -> tuple[RuntimeOptions, BackendChoice]:
    """``options`` with a concrete backend, checked for it."""
    choice = choose_backend(options, device, checkpoint=checkpoint, preset=preset)
    resolved = replace(options, backend=choice.backend)
    check_backend_options(resolved, device)
    return resolved, choice


def _say(progress: bool) -> Any:
    def say(message: str) -> None:
        log.info("%s", message)
        if progress:
            print(f"mlsharp: {message}", file=sys.stderr, flush=True)

    return say


def load_runtime(
    checkpoint: Path,
    cfg: SharpConfig,
    preset: str,
    options: RuntimeOptions,
    *,
    progress: bool = True,
) -> ForwardRuntime:
    """The openvino or onnxruntime runtime for ``options``, converting the network into
    the cache on first use (with messages on stderr when ``progress``)."""
    from mlsharp.backends.cache import ExportSpec, cached_export, openvino_blob_dir
    from mlsharp.backends.export import stored_weights

    resolution = options.resolution or cfg.internal_resolution
    say = _say(progress)
    if options.backend == "openvino":
        from mlsharp.backends.openvino_runtime import OpenVinoRuntime

        weights = stored_weights("openvino", options.precision, int8=options.int8_weights)
        spec = ExportSpec("openvino", preset, resolution, weights)
        folder = cached_export(checkpoint, spec, precision=options.precision, progress=say)
        device = options.backend_device or "CPU"
        return OpenVinoRuntime(
            folder / spec.model_file,
            cfg,
            options,
            device=device,
            blob_dir=openvino_blob_dir(device, options.precision),
        )
    if options.backend == "onnxruntime":
        from mlsharp.backends.onnxruntime_runtime import OnnxRuntimeRuntime

        weights = stored_weights("onnx", options.precision, int8=options.int8_weights)
        spec = ExportSpec("onnx", preset, resolution, weights)
        folder = cached_export(checkpoint, spec, precision=options.precision, progress=say)
        return OnnxRuntimeRuntime(
            folder / spec.model_file, cfg, options, providers=options.backend_device
        )
    raise ConfigError(f"no runtime to load for backend {options.backend!r}")


@dataclass(frozen=True)
class BackendStatus:
    """What ``mlsharp doctor`` reports about one backend.

    Attributes:
        name: ``torch``, ``openvino`` or ``onnxruntime``.
        installed: its package imports.
        version: the package's version.
        devices: OpenVINO's devices or ONNX Runtime's providers (torch: empty).
        note: how to install it, or why it cannot start.
    """

    name: str
    installed: bool
    version: str | None = None
    devices: tuple[str, ...] = ()
    note: str = ""


def probe_backends() -> list[BackendStatus]:
    """Every backend: installed?, version, devices/providers (imports the runtimes)."""
    statuses = []
    for name, (package, extra) in PACKAGES.items():
        if not installed(name):
            statuses.append(BackendStatus(name, False, note=f'pip install "mlsharp[{extra}]"'))
            continue
        try:
            if name == "openvino":
                import openvino

                version = str(openvino.get_version())
                devices = tuple(openvino.Core().available_devices)
            else:
                import onnxruntime

                version = str(onnxruntime.__version__)
                devices = tuple(onnxruntime.get_available_providers())
        except Exception as error:  # a broken install: report it, never crash doctor
            statuses.append(BackendStatus(name, False, note=f"{package} fails to load: {error}"))
            continue
        exporter = installed_exporter()
        statuses.append(
            BackendStatus(name, True, version, devices, "" if exporter else EXPORTER_MISSING)
        )
    return statuses


EXPORTER_MISSING = "the ONNX exporter needs onnx and onnxscript: pip install onnx onnxscript"


def installed_exporter() -> bool:
    """``onnx`` and ``onnxscript`` (torch's ONNX exporter) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))
