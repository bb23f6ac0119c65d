"""Precision modes of the network forward: which are supported where, and their contexts.

=======  ==========================================================================
fp32     IEEE float32 everywhere (the reference). On CUDA this also switches off the
         TF32 convolutions that PyTorch enables by default, for the duration of the call.
tf32     float32 storage, TF32 tensor-core matmuls and convolutions (NVIDIA Ampere+).
bf16     ``torch.autocast`` to bfloat16 (CUDA with bf16 support, CPU, MPS).
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
        if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                "use fp16 or fp32"
            )


@contextmanager
def cuda_fp32_math(tf32: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for float32 matmuls and cuDNN convolutions inside the block;
    the previous settings are restored on exit, also after an error.

    Uses ``torch.set_float32_matmul_precision`` and ``torch.backends.cudnn.allow_tf32``
    (mixing them with the newer per-backend ``fp32_precision`` switches makes PyTorch's
    own getter raise, so this sticks to one API).
    """
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
