"""Choosing the compute device: ``auto`` picks CUDA (NVIDIA, or AMD via ROCm), then Apple's
MPS, then the CPU. Asking for a device that is not there is a :class:`DeviceError`."""

from __future__ import annotations

import torch

from mlsharp.choices import check_device_name
from mlsharp.errors import ConfigError, DeviceError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into an available ``torch.device``."""
    try:
        check_device_name(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    kind = name.split(":", 1)[0]
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' requested but torch sees no CUDA/ROCm GPU "
            f"(torch {torch.__version__}); use --device cpu or install a GPU build of torch"
        )
    if kind == "mps" and not _mps_available():
        raise DeviceError("device 'mps' requested but Apple MPS is not available here")
    return torch.device(name)
