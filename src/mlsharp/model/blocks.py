"""Convolutional building blocks shared by the decoders and the alignment UNet.

Module indices inside the ``nn.Sequential`` containers are part of the checkpoint's key
names (e.g. ``residual.1.weight``), so the layer order here is load-bearing.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsharp.model.layers import Fp32GroupNorm


class ResidualBlock(nn.Module):
    """``shortcut(x) + residual(x)``; the shortcut is the identity when absent."""

    def __init__(self, residual: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.residual(x)
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + delta


def norm_act_conv_block(
    dim_in: int, dim_out: int, *, dim_hidden: int | None = None, norm_groups: int = 8
) -> ResidualBlock:
    """Pre-activation residual block: [GN, ReLU, conv3x3] x 2, 1x1 shortcut if widths differ.

    Indices: residual.0 / residual.3 are GroupNorms, residual.2 / residual.5 the convolutions.
    """
    dim_hidden = dim_out // 2 if dim_hidden is None else dim_hidden
    residual = nn.Sequential(
        Fp32GroupNorm(norm_groups, dim_in),
        nn.ReLU(),
        nn.Conv2d(dim_in, dim_hidden, kernel_size=3, padding=1),
        Fp32GroupNorm(norm_groups, dim_hidden),
        nn.ReLU(),
        nn.Conv2d(dim_hidden, dim_out, kernel_size=3, padding=1),
    )
    shortcut = nn.Conv2d(dim_in, dim_out, kernel_size=1) if dim_in != dim_out else None
    return ResidualBlock(residual, shortcut)


def relu_conv_block(dim: int) -> ResidualBlock:
    """DPT residual unit without normalisation: [ReLU, conv3x3] x 2 (convs at 1 and 3)."""
    residual = nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1),
    )
    return ResidualBlock(residual)


class FeatureFusionBlock(nn.Module):
    """DPT fusion: ``out_conv(up(resnet2(x + resnet1(skip))))``.

    ``deconv`` (the checkpoint's name) is a stride-2 transposed convolution when the block
    upsamples, and an empty ``nn.Sequential`` (identity, no parameters) otherwise.
    """

    def __init__(self, dim: int, dim_out: int | None = None, *, upsample: bool = False) -> None:
        super().__init__()
        self.resnet1 = relu_conv_block(dim)
        self.resnet2 = relu_conv_block(dim)
        self.deconv: nn.Module = (
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2, bias=False)
            if upsample
            else nn.Sequential()
        )
        self.out_conv = nn.Conv2d(dim, dim if dim_out is None else dim_out, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resnet1(skip)
        return self.out_conv(self.deconv(self.resnet2(x)))


def project_upsample_block(
    dim_in: int, dim_out: int, upsample_layers: int, dim_intermediate: int | None = None
) -> nn.Sequential:
    """1x1 projection (no bias) followed by ``upsample_layers`` 2x transposed convolutions."""
    dim_intermediate = dim_out if dim_intermediate is None else dim_intermediate
    layers: list[nn.Module] = [nn.Conv2d(dim_in, dim_intermediate, kernel_size=1, bias=False)]
    for index in range(upsample_layers):
        layers.append(
            nn.ConvTranspose2d(
                dim_intermediate if index == 0 else dim_out,
                dim_out,
                kernel_size=2,
                stride=2,
                bias=False,
            )
        )
    return nn.Sequential(*layers)
