"""Configuration of the SHARP network, with named presets.

``SharpConfig`` describes the architecture only (widths, depths, resolutions); the numbers
of the ``sharp`` preset reproduce Apple's released checkpoint exactly (1,038 tensors,
702,305,169 parameters). ``tiny`` keeps every module and connection but shrinks widths and
depths so tests run in milliseconds; ``tiny`` weights are never meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlsharp.choices import PRESET_CHOICES, Preset

PresetName = Preset
#: ViT tiles are a multiple of this many tokens wide (see SharpConfig.resolution_step).
TOKENS_PER_TILE_STEP = 8
PRESETS: tuple[str, ...] = PRESET_CHOICES


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2-style ViT (timm layout: cls token, learned absolute position embedding)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    img_size: int = 384  # square input side in pixels; a multiple of 8 patches
    patch_size: int = 16  # the encoder's upsampling ladder assumes 16
    mlp_ratio: float = 4.0
    # Width of the (unused) classification head; present only because the checkpoint has it.
    num_classes: int = 21841
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Tokens per side of the patch grid."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class SharpConfig:
    """Architecture of the SHARP predictor (monodepth DPT + Gaussian decoder + composer)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    # Patch-encoder blocks whose outputs feed the two highest-resolution feature maps
    # (only the first two are used; the list mirrors the reference's hook layout).
    vit_hook_blocks: tuple[int, ...] = (5, 11, 17, 23)
    # Channels of the five encoder feature maps (highest resolution first).
    encoder_dims: tuple[int, int, int, int, int] = (256, 256, 512, 1024, 1024)
    # Channels of the monodepth decoder and of the monodepth head's hidden layer.
    monodepth_decoder_dim: int = 256
    monodepth_head_dim: int = 32
    num_depth_layers: int = 2  # two disparity layers -> two layers of Gaussians
    # Gaussian decoder (DPT over the monodepth encoder features + image skip encoder).
    gaussian_decoder_dim: int = 128
    gaussian_feature_dim: int = 32
    norm_groups: int = 8
    # Depth-alignment UNet (unused at inference, kept for checkpoint compatibility).
    alignment_base_width: int = 16
    alignment_steps: int = 4
    alignment_norm_groups: int = 4
    # Stride of the Gaussian grid relative to the internal image (one Gaussian per 2x2 px).
    stride: int = 2

    @property
    def internal_resolution(self) -> int:
        """Side of the square image the network runs at (4 ViT tiles: 1536 for sharp)."""
        return 4 * self.vit.img_size

    @property
    def output_resolution(self) -> int:
        """Side of the Gaussian grid per layer."""
        return self.internal_resolution // self.stride

    @property
    def num_gaussians(self) -> int:
        """Gaussians predicted per image."""
        return self.num_depth_layers * self.output_resolution**2

    @property
    def resolution_step(self) -> int:
        """Every valid internal resolution is a multiple of this (512 px for 16-px patches).

        The sliding-pyramid encoder cuts the image into 5x5 tiles of a quarter of its side
        (25 % overlap) and stitches the ViT token grids back after trimming grid / 8 tokens
        from every inner edge; the five feature maps only halve exactly from level to level
        when that trim is a whole number of tokens. So a tile is 8k patches wide and the
        image 4 x 8k x patch_size.
        """
        return 4 * TOKENS_PER_TILE_STEP * self.vit.patch_size

    def valid_resolutions(self) -> tuple[int, ...]:
        """Internal resolutions this architecture accepts, smallest first.

        Multiples of :attr:`resolution_step` up to twice the native resolution (beyond
        that the resampled position embedding is stretched far outside what the ViT was
        trained on, and memory grows with the square of the side).
        """
        step = self.resolution_step
        return tuple(range(step, 2 * self.internal_resolution + 1, step))

    def num_gaussians_at(self, resolution: int) -> int:
        """Gaussians predicted per image at internal resolution ``resolution``."""
        return self.num_depth_layers * (resolution // self.stride) ** 2


def preset(name: str) -> SharpConfig:
    """Return the configuration of a named preset (``sharp`` or ``tiny``)."""
    if name == "sharp":
        return SharpConfig()
    if name == "tiny":
        # 8x8 tokens per tile keep the sliding-window overlaps integral (grid / 8 tokens);
        # the patch size stays 16 because the encoder's upsampling ladder assumes it, so the
        # internal image is 4 * 128 = 512 px.
        return replace(
            SharpConfig(),
            vit=ViTConfig(embed_dim=32, depth=4, num_heads=2, img_size=128, num_classes=8),
            vit_hook_blocks=(0, 1, 2, 3),
            # encoder_dims[0] equals the monodepth decoder width but not the Gaussian
            # decoder's, exactly as in sharp, so the same projection layers exist.
            encoder_dims=(32, 16, 32, 32, 32),
            monodepth_decoder_dim=32,
            monodepth_head_dim=8,
            gaussian_decoder_dim=16,
            gaussian_feature_dim=8,
            alignment_base_width=8,
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
