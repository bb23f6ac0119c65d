"""The SHARP predictor: image -> 3D Gaussians in NDC-scaled camera space.

Submodule names are the checkpoint's top-level prefixes (``feature_model``,
``monodepth_model``, ``prediction_head``, ``depth_alignment``), in the checkpoint's order.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from mlsharp.model.alignment import DepthAlignment
from mlsharp.model.composer import ComposedGaussians, compose, initialize
from mlsharp.model.config import SharpConfig, preset
from mlsharp.model.gaussian_decoder import GaussianDecoder, PredictionHead
from mlsharp.model.monodepth import MonodepthModel


class SharpModel(nn.Module):
    """SHARP: monodepth -> base Gaussians -> Gaussian decoder -> deltas -> composed Gaussians."""

    def __init__(self, cfg: SharpConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_model = GaussianDecoder(cfg)
        self.monodepth_model = MonodepthModel(cfg)
        self.prediction_head = PredictionHead(cfg.gaussian_feature_dim, cfg.num_depth_layers)
        self.depth_alignment = DepthAlignment(
            cfg.alignment_base_width, cfg.alignment_steps, cfg.alignment_norm_groups
        )

    @property
    def internal_resolution(self) -> int:
        """Side of the square image ``forward`` expects."""
        return self.cfg.internal_resolution

    def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> ComposedGaussians:
        """Predict Gaussians.

        Args:
            image: (B, 3, S, S) pixels in [0, 1], S = ``internal_resolution``.
            disparity_factor: (B,) focal length in pixels divided by the input image width;
                converts the network's disparity into metric depth.
        """
        size = self.internal_resolution
        if image.shape[-2:] != (size, size):
            raise ValueError(f"expected a {size}x{size} image, got {tuple(image.shape[-2:])}")
        monodepth = self.monodepth_model(image)
        depth = disparity_factor[:, None, None, None] / monodepth.disparity.clamp(min=1e-4, max=1e4)
        init = initialize(image, depth, stride=self.cfg.stride)
        features = self.feature_model(init.network_input, monodepth.encoder_features)
        delta = self.prediction_head(features)
        return compose(delta, init.base, init.global_scale)._replace(depth=depth[:, 0])


def build_model(
    config: str | SharpConfig = "sharp", *, device: torch.device | str | None = None
) -> SharpModel:
    """Build an (untrained) SHARP model for a preset name or config.

    Pass ``device="meta"`` to build without allocating memory, then load weights with
    ``load_state_dict(..., assign=True)``.
    """
    cfg = preset(config) if isinstance(config, str) else config
    with torch.device(device) if device is not None else nullcontext():
        return SharpModel(cfg)
