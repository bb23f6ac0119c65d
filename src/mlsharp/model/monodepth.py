"""Monodepth network: sliding-pyramid encoder + DPT decoder + disparity head.

Predicts ``num_depth_layers`` disparity maps at the internal resolution (the first for
the visible surface, the second for what lies behind it) and exposes the encoder's
feature maps, which the Gaussian decoder reuses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mlsharp.model.config import SharpConfig
from mlsharp.model.decoder import MultiresConvDecoder
from mlsharp.model.encoder import SlidingPyramidEncoder


class MonodepthOutput(NamedTuple):
    """Disparity (B, layers, S, S) and the five encoder feature maps (finest first)."""

    disparity: torch.Tensor
    encoder_features: list[torch.Tensor]


class DepthDPT(nn.Module):
    """Encoder, decoder and head of the monodepth network."""

    def __init__(self, cfg: SharpConfig) -> None:
        super().__init__()
        self.encoder = SlidingPyramidEncoder(cfg)
        dim = cfg.monodepth_decoder_dim
        self.decoder = MultiresConvDecoder(cfg.encoder_dims, dim)
        half = dim // 2
        self.head = nn.Sequential(
            nn.Conv2d(dim, half, kernel_size=3, padding=1),
            nn.ConvTranspose2d(half, half, kernel_size=2, stride=2),
            nn.Conv2d(half, cfg.monodepth_head_dim, kernel_size=3, padding=1),
            nn.ReLU(),
            # One output channel per depth layer.
            nn.Conv2d(cfg.monodepth_head_dim, cfg.num_depth_layers, kernel_size=1),
            nn.ReLU(),
        )

    def forward(self, image: torch.Tensor) -> MonodepthOutput:
        # The encoders expect pixels in [-1, 1].
        features = self.encoder(image * 2.0 - 1.0)
        disparity = self.head(self.decoder(features))
        return MonodepthOutput(disparity=disparity, encoder_features=features)


class MonodepthModel(nn.Module):
    """Wrapper that only exists to reproduce the checkpoint's key prefix
    ``monodepth_model.monodepth_predictor.*``."""

    def __init__(self, cfg: SharpConfig) -> None:
        super().__init__()
        self.monodepth_predictor = DepthDPT(cfg)

    def forward(self, image: torch.Tensor) -> MonodepthOutput:
        return self.monodepth_predictor(image)
