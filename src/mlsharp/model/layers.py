"""Precision-aware building blocks: normalisations and regions that always run in float32.

Under ``torch.autocast`` (the engine's ``bf16`` / ``fp16`` modes) matmuls and convolutions
run in the low precision, but the per-device autocast op lists disagree about
normalisations (CUDA keeps ``layer_norm`` / ``group_norm`` in float32, CPU does not). The
classes here make the policy explicit and device-independent: statistics are always
computed in float32. Outside autocast with float32 input they are exactly the stock
modules (same kernels, same rounding), so the fp32 reference path is unchanged.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def _low_precision(x: torch.Tensor) -> bool:
    """True when ``x`` is not float32 or autocast is on for its device."""
    return x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type)


def fp32_region(device: torch.device) -> AbstractContextManager[object]:
    """A context in which autocast is off on ``device``: ops run in their inputs' dtype.

    Callers cast their inputs with ``.float()`` on entry; the context keeps autocast from
    casting them back down inside.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


class Fp32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 whatever the input dtype or autocast state.

    Returns float32; the next matmul under autocast casts it down again.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class Fp32GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32 whatever the input dtype or autocast state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
