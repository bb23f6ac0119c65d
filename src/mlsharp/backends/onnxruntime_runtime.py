"""The ``onnxruntime`` runtime: an exported ONNX file run by ONNX Runtime.

``--backend-device`` is an ordered list of execution providers, short names or ONNX
Runtime's own (``qnn,dml,cuda,cpu`` or ``QNNExecutionProvider,...``). The ones this
onnxruntime build offers (``onnxruntime.get_available_providers()``) are used in that
order; the CPU provider is always added last, so an operator another provider lacks
still runs. Providers live in separate packages (``onnxruntime-gpu``,
``onnxruntime-directml``, ``onnxruntime-qnn``, ``onnxruntime-openvino``): docs/hardware.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsharp.backends.base import RuntimeInfo, allocation_failure
from mlsharp.backends.export import missing_extra
from mlsharp.errors import ConfigError
from mlsharp.model.composer import ComposedGaussians
from mlsharp.model.config import SharpConfig
from mlsharp.runtime.memory import memory_use
from mlsharp.runtime.options import RuntimeOptions

#: Short names -> ONNX Runtime provider names, and the package that brings each.
PROVIDERS: dict[str, tuple[str, str]] = {
    "cpu": ("CPUExecutionProvider", "onnxruntime"),
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu"),
    "dml": ("DmlExecutionProvider", "onnxruntime-directml"),
    "qnn": ("QNNExecutionProvider", "onnxruntime-qnn"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime (macOS wheels)"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "rocm": ("ROCMExecutionProvider", "onnxruntime-rocm"),
    "migraphx": ("MIGraphXExecutionProvider", "onnxruntime-migraphx"),
}
#: The provider order used when ``--backend-device`` is not given: GPUs/NPUs first.
DEFAULT_ORDER = ("cuda", "dml", "coreml", "cpu")
CPU = "CPUExecutionProvider"


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`ConfigError` naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise missing_extra("onnxruntime", "onnx") from None
    return onnxruntime


def provider_name(name: str) -> str:
    """``cuda`` -> ``CUDAExecutionProvider``; full provider names pass through."""
    key = name.strip().lower()
    if key in PROVIDERS:
        return PROVIDERS[key][0]
    if key == "directml":
        return PROVIDERS["dml"][0]
    if name.strip().endswith("ExecutionProvider"):
        return name.strip()
    raise ConfigError(
        f"unknown ONNX Runtime provider {name!r}; use {', '.join(PROVIDERS)} or a full "
        "provider name such as CUDAExecutionProvider"
    )


def provider_options(provider: str) -> dict[str, str]:
    """Options a provider needs to start (QNN: which backend library runs the graph)."""
    if provider == "QNNExecutionProvider":
        # The HTP (Hexagon NPU) backend; the library name is per platform.
        return {"backend_path": "QnnHtp.dll" if sys.platform == "win32" else "libQnnHtp.so"}
    return {}


def select_providers(requested: str | None, available: list[str]) -> list[str]:
    """The providers to use, in order: the requested ones this build offers (``None``:
    :data:`DEFAULT_ORDER`), then the CPU provider.

    Raises :class:`ConfigError` when providers were named and none of them is available,
    naming the package that brings the first one.
    """
    if requested is None or requested.strip().lower() == "auto":
        wanted = [PROVIDERS[short][0] for short in DEFAULT_ORDER]
    else:
        wanted = [provider_name(part) for part in requested.split(",") if part.strip()]
        if not wanted:
            raise ConfigError("--backend-device: name at least one ONNX Runtime provider")
    chosen = [p for p in dict.fromkeys(wanted) if p in available]
    if requested is not None and not chosen:
        first = wanted[0]
        package = next((pkg for prov, pkg in PROVIDERS.values() if prov == first), "onnxruntime")
        raise ConfigError(
            f"ONNX Runtime provider {first} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); it comes with {package}"
        )
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)  # operators another provider lacks fall back to the CPU
    return chosen


class OnnxRuntimeRuntime:
    """An ONNX Runtime session over the exported file, run photo by photo (batch of 1)."""

    name = "onnxruntime"
    fixed_shapes = False  # photo by photo: every batch size runs the same graph

    def __init__(
        self,
        model_file: Path,
        cfg: SharpConfig,
        options: RuntimeOptions,
        *,
        providers: str | None = None,
    ) -> None:
        ort = import_onnxruntime()
        if options.precision != "fp32":
            raise ConfigError(
                f"precision {options.precision} is not offered by the onnxruntime backend "
                "(it runs fp32, optionally with int8 weights); use --backend openvino for bf16"
            )
        chosen = select_providers(providers, list(ort.get_available_providers()))
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3  # errors only: no provider chatter on stderr
        self.cfg = cfg
        self.options = options
        self.device = torch.device("cpu")
        self.model_file = model_file
        self.version = str(ort.__version__)
        self._session = ort.InferenceSession(
            str(model_file),
            sess_options=session_options,
            providers=[(p, provider_options(p)) for p in chosen],
        )
        self.providers = list(self._session.get_providers())
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, images: torch.Tensor, disparity_factors: torch.Tensor) -> ComposedGaussians:
        """Run each photo of the batch; outputs concatenated along the batch."""
        pixels = images.detach().cpu().float().numpy()
        factors = disparity_factors.detach().cpu().float().numpy()
        per_photo = [
            self._run_one(pixels[i : i + 1], factors[i : i + 1]) for i in range(len(pixels))
        ]
        columns = zip(*per_photo, strict=True)
        return ComposedGaussians(*(torch.from_numpy(np.concatenate(c)) for c in columns))

    def _run_one(self, pixels: np.ndarray, factor: np.ndarray) -> list[np.ndarray]:
        """One photo; ONNX Runtime's failed allocation becomes a ``MemoryError``."""
        failure = None
        try:
            return list(
                self._session.run(self._outputs, {"image": pixels, "disparity_factor": factor})
            )
        except Exception as error:  # onnxruntime's own exception types derive from Exception
            failure = allocation_failure(error)
            if failure is None:
                raise
        raise failure  # outside the except block: the failed run's buffers are gone

    def suggested_batch_size(self) -> int:
        """1: the graph has a static batch of one."""
        return 1

    def reset(self) -> None:
        """Nothing to reset."""

    def info(self) -> RuntimeInfo:
        """The providers in use, precision and the process's resident memory."""
        use = memory_use(torch.device("cpu"))
        return RuntimeInfo(
            backend=self.name,
            device=",".join(self.providers),
            precision=self.options.precision,
            version=self.version,
            memory_bytes=use[0] if use else None,
            detail=str(self.model_file),
        )
