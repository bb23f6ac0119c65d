"""Depth-alignment UNet of the reference (``depth_alignment.scale_map_estimator``).

SHARP uses it only in training, to align the predicted depth to a ground-truth depth with a
smooth scale map. Inference never runs it, but the released checkpoint contains its
weights, so the module exists to load that checkpoint strictly. Its forward is implemented
(small and cheap) so the module is complete, but nothing in mlsharp calls it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from mlsharp.model.blocks import norm_act_conv_block
from mlsharp.model.layers import Fp32GroupNorm


class UNetEncoder(nn.Module):
    """Stem conv, then ``steps`` stages of [avg-pool 2x, residual block, residual block]."""

    def __init__(self, dim_in: int, widths: list[int], norm_groups: int) -> None:
        super().__init__()
        # Registered before conv_in to reproduce the checkpoint's key order.
        self.convs_down = nn.ModuleList()
        self.conv_in = nn.Sequential(
            nn.Conv2d(dim_in, widths[0], kernel_size=3, padding=1),
            Fp32GroupNorm(norm_groups, widths[0]),
            nn.ReLU(),
        )
        for width_in, width_out in itertools.pairwise(widths):
            self.convs_down.append(
                nn.Sequential(
                    nn.AvgPool2d(2, stride=2),
                    norm_act_conv_block(width_in, width_out, norm_groups=norm_groups),
                    norm_act_conv_block(width_out, width_out, norm_groups=norm_groups),
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.conv_in(x)]
        for stage in self.convs_down:
            features.append(stage(features[-1]))
        return features


class UNetDecoder(nn.Module):
    """``steps`` stages of [nearest 2x upsample, residual blocks] with skip concatenation."""

    def __init__(self, dim_out: int, widths: list[int], steps: int, norm_groups: int) -> None:
        super().__init__()
        dims = widths[::-1][: steps + 1]
        self.convs_up = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2),
                norm_act_conv_block(
                    dims[i] * (1 if i == 0 else 2), dims[i + 1], norm_groups=norm_groups
                ),
                norm_act_conv_block(dims[i + 1], dims[i + 1], norm_groups=norm_groups),
            )
            for i in range(steps)
        )
        self.conv_out = nn.Sequential(
            Fp32GroupNorm(norm_groups, dims[-1] * 2),
            nn.ReLU(),
            nn.Conv2d(dims[-1] * 2, dim_out, kernel_size=1),
            Fp32GroupNorm(norm_groups, dim_out),
            nn.ReLU(),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        level = len(features) - 1
        out = self.convs_up[0](features[level])
        for stage in self.convs_up[1:]:
            level -= 1
            out = stage(torch.cat([out, features[level]], dim=1))
        return self.conv_out(torch.cat([out, features[level - 1]], dim=1))


class LearnedAlignment(nn.Module):
    """Predicts a positive per-pixel scale map aligning a source depth to a target depth."""

    def __init__(self, base_width: int = 16, steps: int = 4, norm_groups: int = 4) -> None:
        super().__init__()
        widths = [min(base_width << i, 1024) for i in range(steps + 1)]
        self.encoder = UNetEncoder(2, widths, norm_groups)
        self.decoder = UNetDecoder(widths[0], widths, steps, norm_groups)
        self.conv_out = nn.Conv2d(widths[0], 1, kernel_size=1)
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None
        nn.init.zeros_(self.conv_out.bias)  # exp(0) = 1: identity alignment at start

    def forward(self, depth_src: torch.Tensor, depth_tgt: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([1.0 / depth_src.clamp(min=1e-4), 1.0 / depth_tgt.clamp(min=1e-4)], 1)
        scale = torch.exp(self.conv_out(self.decoder(self.encoder(inputs))))
        if scale.shape[-2:] != depth_src.shape[-2:]:
            scale = F.interpolate(scale, size=depth_src.shape[-2:], mode="bilinear")
        return scale


class DepthAlignment(nn.Module):
    """Wrapper reproducing the key prefix ``depth_alignment.scale_map_estimator``."""

    def __init__(self, base_width: int, steps: int, norm_groups: int) -> None:
        super().__init__()
        self.scale_map_estimator = LearnedAlignment(base_width, steps, norm_groups)
