"""Precision modes of the network forward: which are supported where, and their contexts.

=======  ==========================================================================
fp32     IEEE float32 everywhere (the reference). On CUDA this also switches off the
         TF32 convolutions that PyTorch enables by default, for the duration of the call.
tf32     float32 storage, TF32 tensor-core matmuls and convolutions (NVIDIA Ampere+).
bf16     ``torch.autocast`` to bfloat16 (NVIDIA Ampere+ and AMD GPUs, CPU, MPS on
         macOS 14+; refused where the GPU would only emulate it).
fp16     ``torch.autocast`` to float16 (CUDA, MPS; CPU works but is slow without
         native fp16 arithmetic).
=======  ==========================================================================

In every mode the normalisations, the depth conversion, the prediction head, the
composition and the post-processing run in float32 (see :mod:`mlsharp.model.layers`).

The TF32 switches are process-wide flags of PyTorch; :func:`precision_context` sets them
for the duration of one forward and restores the previous values afterwards, so other
code in the process is unaffected (two engines with different modes running forwards
concurrently in threads would see each other's flags).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from mlsharp.errors import ConfigError
from mlsharp.runtime.options import PRECISION_CHOICES

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` when ``precision`` cannot run on ``device``."""
    if precision not in PRECISION_CHOICES:
        raise ConfigError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    kind = device.type
    if precision == "tf32":
        if kind != "cuda":
            raise ConfigError(
                f"precision tf32 needs an NVIDIA GPU (Ampere or newer); {device} has no TF32 "
                "mode: use fp32, or bf16 for speed"
            )
        if torch.version.hip:  # ROCm reports its devices as "cuda" too
            raise ConfigError(
                f"precision tf32 needs an NVIDIA GPU; {device} is an AMD GPU (ROCm): use fp32, "
                "or bf16/fp16 for speed"
            )
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise ConfigError(
                f"precision tf32 needs compute capability 8.0 or newer (Ampere); {device} "
                f"has {major}.{minor}: use fp32 or fp16"
            )
    elif precision in AUTOCAST_DTYPES:
        if not torch.amp.is_autocast_available(kind):
            raise ConfigError(f"precision {precision} needs autocast, which {kind} lacks")
        if precision == "bf16":
            problem = bf16_problem(device)
            if problem:
                raise ConfigError(f"precision bf16 {problem}; use fp16 or fp32")


def cuda_bf16_native(capability: tuple[int, int], hip: str | None) -> bool:
    """Whether a CUDA/ROCm GPU computes bf16 in hardware (facts in, answer out).

    NVIDIA: compute capability 8.0 (Ampere) or newer; older GPUs only emulate bf16 (torch's
    ``is_bf16_supported()`` says yes for them by default), which is slower than fp32.
    ROCm: torch treats every AMD GPU it supports as bf16-capable.
    """
    return bool(hip) or capability >= (8, 0)


def mps_bf16_supported(macos_version: str) -> bool:
    """Whether MPS runs bf16 on this macOS (``platform.mac_ver()[0]``, e.g. ``"14.4.1"``):
    Metal gained bfloat16 in macOS 14 (Sonoma); on 13 the MPS kernels reject it."""
    try:
        major = int(macos_version.split(".", 1)[0])
    except ValueError:
        return False
    return major >= 14


def bf16_problem(device: torch.device) -> str | None:
    """Why bf16 cannot run natively on ``device``, or ``None`` when it can.

    Asks about ``device`` itself (not the current device, as ``torch.cuda.is_bf16_supported``
    does) from its properties, which creates no CUDA context.
    """
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        if not cuda_bf16_native((props.major, props.minor), torch.version.hip):
            return (
                f"is only emulated on {props.name} (compute capability "
                f"{props.major}.{props.minor}; native bf16 needs 8.0 or newer)"
            )
    elif device.type == "mps":
        import platform

        version = platform.mac_ver()[0]
        if not mps_bf16_supported(version):
            return f"needs macOS 14 or newer on MPS (this is macOS {version or 'unknown'})"
    return None


def _fp32_precision_api() -> bool:
    """Whether this torch has the per-backend ``fp32_precision`` switches (torch >= 2.9)."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        getattr(torch.backends.cudnn, "conv", None), "fp32_precision"
    )


def tf32_state() -> tuple[str, str]:
    """The (matmul, convolution) float32 settings as :func:`cuda_fp32_math` sets them:
    ``fp32_precision`` values (``"tf32"``, ``"ieee"``, ``"none"``) on torch >= 2.9, else
    ``torch.get_float32_matmul_precision()`` and ``"tf32"``/``"ieee"`` from cuDNN's flag."""
    if _fp32_precision_api():
        conv: Any = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # torch >= 2.9
        return torch.backends.cuda.matmul.fp32_precision, conv.fp32_precision
    conv = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return torch.get_float32_matmul_precision(), conv


@contextmanager
def cuda_fp32_math(tf32: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for float32 matmuls and cuDNN convolutions inside the block;
    the previous settings are restored on exit, also after an error.

    On torch >= 2.9 this reads and writes only the per-backend ``fp32_precision``
    switches: once anything in the process has used them, the legacy getters
    (``torch.get_float32_matmul_precision``, ``cudnn.allow_tf32``) raise, while the new
    getters always answer. Older torch has only the legacy API.
    """
    if _fp32_precision_api():
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv  # type: ignore[attr-defined]
        saved = (matmul.fp32_precision, conv.fp32_precision)
        wanted = "tf32" if tf32 else "ieee"
        matmul.fp32_precision = wanted
        conv.fp32_precision = wanted
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved_matmul = torch.get_float32_matmul_precision()
    saved_conv = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved_matmul)
        torch.backends.cudnn.allow_tf32 = saved_conv


@contextmanager
def precision_context(
    precision: str, device: torch.device, *, autocast_cache: bool = True
) -> Iterator[None]:
    """Run the enclosed forward in ``precision`` on ``device`` (see the module docstring).

    ``autocast_cache=False`` is needed while capturing CUDA graphs.
    """
    with ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(cuda_fp32_math(precision == "tf32"))
        if precision in AUTOCAST_DTYPES:
            stack.enter_context(
                torch.autocast(
                    device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=autocast_cache
                )
            )
        yield
