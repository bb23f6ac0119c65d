"""Gaussian decoder: turns monodepth features + the image into per-pixel Gaussian deltas.

A second DPT decoder fuses the monodepth encoder's five feature maps, a strided "skip"
convolution brings the RGB + normalised-disparity input to the same resolution, and two
heads (texture, geometry) produce features from which 1x1 convolutions predict the
deltas of every Gaussian attribute for each depth layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mlsharp.model.blocks import FeatureFusionBlock, norm_act_conv_block
from mlsharp.model.config import SharpConfig
from mlsharp.model.decoder import MultiresConvDecoder

# Attribute channels per Gaussian: 3 position, 3 scale, 4 quaternion, 3 colour, 1 opacity.
NUM_ATTRIBUTES = 14
NUM_GEOMETRY_ATTRIBUTES = 3


class ImageFeatures(NamedTuple):
    """Features of the two heads at the Gaussian grid resolution."""

    texture: torch.Tensor
    geometry: torch.Tensor


class SkipConv(nn.Module):
    """Strided convolution from the network input to the decoder resolution."""

    def __init__(self, dim_in: int, dim_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _feature_head(dim: int, dim_out: int, norm_groups: int) -> nn.Sequential:
    return nn.Sequential(
        norm_act_conv_block(dim, dim, dim_hidden=dim // 2, norm_groups=norm_groups),
        norm_act_conv_block(dim, dim, dim_hidden=dim // 2, norm_groups=norm_groups),
        nn.ReLU(),
        nn.Conv2d(dim, dim_out, kernel_size=1),
        nn.ReLU(),
    )


class GaussianDecoder(nn.Module):
    """DPT over the monodepth features, fused with the image skip encoder (``feature_model``)."""

    def __init__(self, cfg: SharpConfig) -> None:
        super().__init__()
        if cfg.stride != 2:
            raise ValueError("only a Gaussian grid stride of 2 is supported")
        dim = cfg.gaussian_decoder_dim
        self.decoder = MultiresConvDecoder(cfg.encoder_dims, dim)
        # Input: RGB plus one normalised disparity channel per depth layer.
        self.image_encoder = SkipConv(3 + cfg.num_depth_layers, dim, stride=cfg.stride)
        self.fusion = FeatureFusionBlock(dim)
        self.texture_head = _feature_head(dim, cfg.gaussian_feature_dim, cfg.norm_groups)
        self.geometry_head = _feature_head(dim, cfg.gaussian_feature_dim, cfg.norm_groups)

    def forward(self, network_input: torch.Tensor, encodings: list[torch.Tensor]) -> ImageFeatures:
        features = self.decoder(encodings)
        features = self.fusion(features, self.image_encoder(network_input))
        return ImageFeatures(
            texture=self.texture_head(features), geometry=self.geometry_head(features)
        )


class PredictionHead(nn.Module):
    """1x1 convolutions from head features to per-layer attribute deltas.

    Output: (B, 14, layers, H, W) with channels ordered position (3), scale (3),
    quaternion (4), colour (3), opacity (1).
    """

    def __init__(self, feature_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.geometry_prediction_head = nn.Conv2d(
            feature_dim, NUM_GEOMETRY_ATTRIBUTES * num_layers, kernel_size=1
        )
        self.texture_prediction_head = nn.Conv2d(
            feature_dim, (NUM_ATTRIBUTES - NUM_GEOMETRY_ATTRIBUTES) * num_layers, kernel_size=1
        )

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        # Channels are attribute-major: channel = attribute * layers + layer.
        geometry = self.geometry_prediction_head(features.geometry)
        texture = self.texture_prediction_head(features.texture)
        geometry = geometry.unflatten(1, (NUM_GEOMETRY_ATTRIBUTES, self.num_layers))
        texture = texture.unflatten(1, (NUM_ATTRIBUTES - NUM_GEOMETRY_ATTRIBUTES, self.num_layers))
        return torch.cat((geometry, texture), dim=1)
