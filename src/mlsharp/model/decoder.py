"""Multi-resolution convolutional decoder (the DPT "reassemble + fuse" stage).

Takes five feature maps, highest resolution first, each at twice the resolution of the
next, and fuses them from coarsest to finest into one map at the finest resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlsharp.model.blocks import FeatureFusionBlock


class MultiresConvDecoder(nn.Module):
    """DPT decoder: per-level projection convs, then a chain of fusion blocks."""

    def __init__(self, dims_in: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dims_in = list(dims_in)
        self.dim_out = dim
        # Level 0 gets a 1x1 projection only when its width differs (identity otherwise:
        # no parameters, as in the checkpoint); coarser levels get a 3x3 conv.
        convs: list[nn.Module] = [
            nn.Conv2d(self.dims_in[0], dim, kernel_size=1, bias=False)
            if self.dims_in[0] != dim
            else nn.Identity()
        ]
        convs += [
            nn.Conv2d(width, dim, kernel_size=3, padding=1, bias=False)
            for width in self.dims_in[1:]
        ]
        self.convs = nn.ModuleList(convs)
        # Every level but the finest upsamples by 2 after fusing.
        self.fusions = nn.ModuleList(
            FeatureFusionBlock(dim, upsample=level != 0) for level in range(len(self.dims_in))
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps, got {len(features)}")
        fused = self.fusions[-1](self.convs[-1](features[-1]))
        for level in range(len(features) - 2, -1, -1):
            fused = self.fusions[level](fused, self.convs[level](features[level]))
        return fused
