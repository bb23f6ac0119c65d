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
    index = gpu_index(name)
    if index is not None:
        # Checked on our own parse: torch.device keeps the index in 8 bits, so it reads
        # "cuda:256" as cuda:0 and "cuda:300" as cuda:44.
        check_gpu_index(index, torch.cuda.device_count())
    return torch.device(name)


def gpu_index(name: str) -> int | None:
    """The ``N`` of a checked ``cuda:N`` device name (``None`` for other names)."""
    kind, _, index = name.partition(":")
    return int(index) if kind == "cuda" and index else None


def check_gpu_index(index: int, count: int) -> None:
    """Raise :class:`DeviceError` unless GPU ``index`` is one of the ``count`` torch sees.

    Without this check ``cuda:7`` on a two-GPU machine would only fail when the weights
    are moved there, with torch's "invalid device ordinal".
    """
    if 0 <= index < count:
        return
    seen = f"cuda:0 to cuda:{count - 1}" if count > 1 else "only cuda:0" if count else "none"
    raise DeviceError(
        f"device 'cuda:{index}' requested but torch sees {count} GPU"
        f"{'' if count == 1 else 's'} ({seen}); check --device and CUDA_VISIBLE_DEVICES"
    )
