"""The ``openvino`` runtime: an exported IR compiled by OpenVINO for CPU, GPU or NPU.

The IR comes from :mod:`mlsharp.backends.cache` (exported on first use). ``precision``
maps to OpenVINO's ``INFERENCE_PRECISION_HINT`` (``fp32`` -> ``f32``, ``bf16`` ->
``bf16``, ``fp16`` -> ``f16``): the same IR runs in every precision the device offers.
Compiled blobs are kept in OpenVINO's own cache (``CACHE_DIR``), so a second process
skips the compilation too.
"""

from __future__ import annotations

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

#: mlsharp precision -> OpenVINO inference precision hint.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: OpenVINO's device capability that each reduced precision needs.
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
#: Device names ``--backend-device`` accepts (OpenVINO's own; ``GPU.1`` etc. too).
DEVICES = ("CPU", "GPU", "NPU", "AUTO")


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line :class:`ConfigError` naming the extra."""
    try:
        import openvino
    except ImportError:
        raise missing_extra("openvino", "openvino") from None
    return openvino


def check_device(core: Any, device: str) -> None:
    """Raise :class:`ConfigError` unless OpenVINO can use ``device`` here."""
    available = list(core.available_devices)
    base = device.split(".")[0]
    if base not in DEVICES:
        raise ConfigError(
            f"unknown OpenVINO device {device!r}; choose {', '.join(DEVICES)} "
            f"(available here: {', '.join(available)})"
        )
    if base != "AUTO" and device not in available and base not in available:
        raise ConfigError(
            f"OpenVINO device {device} is not available here (found: {', '.join(available)}); "
            "see docs/hardware.md for the drivers each device needs"
        )


def check_precision(core: Any, device: str, precision: str) -> None:
    """Raise :class:`ConfigError` when ``device`` cannot compute in ``precision``."""
    if precision not in INFERENCE_PRECISION:
        raise ConfigError(
            f"precision {precision} is not an OpenVINO mode; choose "
            f"{', '.join(INFERENCE_PRECISION)}"
        )
    needed = CAPABILITY.get(precision)
    if needed is None or device.split(".")[0] == "AUTO":
        return
    capabilities = set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    if needed not in capabilities:
        raise ConfigError(
            f"OpenVINO's {device} device has no {precision} support here (it offers "
            f"{', '.join(sorted(capabilities))}); use fp32"
        )


class OpenVinoRuntime:
    """A compiled IR; one inference request, run photo by photo (static batch of 1)."""

    name = "openvino"
    fixed_shapes = False  # photo by photo: every batch size runs the same graph

    def __init__(
        self,
        model_file: Path,
        cfg: SharpConfig,
        options: RuntimeOptions,
        *,
        device: str = "CPU",
        blob_dir: Path | None = None,
    ) -> None:
        ov = import_openvino()
        core = ov.Core()
        check_device(core, device)
        check_precision(core, device, options.precision)
        if blob_dir is not None:
            blob_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blob_dir)})
        config = {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[options.precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if device.split(".")[0] == "AUTO":
            config.pop("INFERENCE_PRECISION_HINT")  # AUTO forwards no such property
        self.cfg = cfg
        self.options = options
        self.device = torch.device("cpu")
        self.ov_device = device
        self.model_file = model_file
        self.version = str(ov.get_version())
        # Read from the file (memory-mapped by OpenVINO) and compiled: the compiled
        # model keeps its own copy of the weights in the device's layout, after which the
        # mapping is dropped with the model object.
        self._compiled = core.compile_model(str(model_file), device, config)
        self._request = self._compiled.create_infer_request()

    def run(self, images: torch.Tensor, disparity_factors: torch.Tensor) -> ComposedGaussians:
        """Infer each photo of the batch; outputs concatenated along the batch."""
        pixels = images.detach().cpu().float().numpy()
        factors = disparity_factors.detach().cpu().float().numpy()
        per_photo = []
        for index in range(pixels.shape[0]):
            try:
                self._request.infer([pixels[index : index + 1], factors[index : index + 1]])
            except RuntimeError as error:
                failure = allocation_failure(error)
                if failure is None:
                    raise
            else:
                failure = None
            if failure is not None:  # outside the except block: the traceback is gone
                raise failure
            # Copies: the request's output buffers are overwritten by the next photo.
            per_photo.append(
                [
                    np.array(self._request.get_output_tensor(i).data, copy=True)
                    for i in range(len(ComposedGaussians._fields))
                ]
            )
        return _compose(per_photo)

    def suggested_batch_size(self) -> int:
        """1: the graph has a static batch of one."""
        return 1

    def reset(self) -> None:
        """Nothing to reset (a failed inference leaves the request reusable)."""

    def info(self) -> RuntimeInfo:
        """OpenVINO's device, precision and the process's resident memory."""
        use = memory_use(torch.device("cpu"))
        return RuntimeInfo(
            backend=self.name,
            device=self.ov_device,
            precision=self.options.precision,
            version=self.version,
            memory_bytes=use[0] if use else None,
            detail=str(self.model_file),
        )


def _compose(per_photo: list[list[np.ndarray]]) -> ComposedGaussians:
    """Stack per-photo output arrays (batch of 1 each) into one batch of tensors."""
    columns = zip(*per_photo, strict=True)
    return ComposedGaussians(*(torch.from_numpy(np.concatenate(c)) for c in columns))
