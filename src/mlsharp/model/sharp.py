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
from mlsharp.model.gaussian_decoder import GaussianDecoder, ImageFeatures, PredictionHead
from mlsharp.model.layers import fp32_region
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
        """Side of the square image the preset was trained at (``forward`` also accepts
        the other sizes of ``cfg.valid_resolutions()``)."""
        return self.cfg.internal_resolution

    def conv_decoders(self) -> list[nn.Module]:
        """The convolutional parts after the ViTs: feature upsampling, both DPT decoders
        and heads (what ``channels_last`` speeds up on GPUs)."""
        predictor = self.monodepth_model.monodepth_predictor
        encoder = predictor.encoder
        return [
            *(module for name, module in encoder.named_children() if "encoder" not in name),
            predictor.decoder,
            predictor.head,
            self.feature_model,
            self.prediction_head,
        ]

    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        """Store the convolution weights of :meth:`conv_decoders` in ``memory_format``.

        Convolutions propagate a channels-last weight to their outputs, so activations
        follow; the values computed are the same up to float rounding.
        """
        for module in self.conv_decoders():
            module.to(memory_format=memory_format)  # type: ignore[call-overload]

    def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> ComposedGaussians:
        """Predict Gaussians.

        Under autocast (bf16/fp16) the network's matmuls and convolutions run in the low
        precision; the depth conversion, base Gaussians, prediction head and composition
        always run in float32 (see :mod:`mlsharp.model.layers`).

        Args:
            image: (B, 3, S, S) pixels in [0, 1]; S = ``internal_resolution`` or another of
                ``cfg.valid_resolutions()``.
            disparity_factor: (B,) focal length in pixels divided by the input image width;
                converts the network's disparity into metric depth.
        """
        size = image.shape[-1]
        if image.shape[-2] != size or size % self.cfg.resolution_step:
            native = self.internal_resolution
            raise ValueError(
                f"expected a {native}x{native} image (or a square whose side is another "
                f"multiple of {self.cfg.resolution_step}), got {tuple(image.shape[-2:])}"
            )
        monodepth = self.monodepth_model(image)
        with fp32_region(image.device):
            disparity = monodepth.disparity.float()
            depth = disparity_factor.float()[:, None, None, None] / disparity.clamp(
                min=1e-4, max=1e4
            )
            init = initialize(image.float(), depth, stride=self.cfg.stride)
        features = self.feature_model(init.network_input, monodepth.encoder_features)
        with fp32_region(image.device):
            features = ImageFeatures(*(f.float() for f in features))
            delta = self.prediction_head(features)
            composed = compose(delta, init.base, init.global_scale)
        return composed._replace(depth=depth[:, 0])


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
