"""Sliding-pyramid encoder (from Depth Pro): multi-resolution features from two ViTs.

The internal image (4 ViT tiles wide: 1536 px for ``sharp``) is seen at three scales:

    level 0: full size, cut into 5x5 tiles with 25 % overlap   \
    level 1: half size, cut into 3x3 tiles with 50 % overlap    } one patch-encoder batch
    level 2: quarter size (exactly one tile)                   /
    level 2 again through the separate image encoder

Tiles are encoded in one batch, stitched back into feature maps (overlaps trimmed), and
upsampled with transposed convolutions into five maps at 1/2, 1/4, 1/8, 1/16 and 1/32 of
the internal resolution (768, 384, 192, 96 and 48 px for ``sharp``).

Other internal resolutions keep this layout with a proportionally smaller or larger tile
(the ViT resamples its position embedding); see ``SharpConfig.valid_resolutions``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlsharp.model.blocks import project_upsample_block
from mlsharp.model.config import SharpConfig
from mlsharp.model.vit import VisionTransformer


def split_into_tiles(image: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """Cut a square (B, C, S, S) image into overlapping tiles, row-major, stacked on dim 0.

    The result has shape (B * n * n, C, tile, tile); tile k of batch item b is at
    index ``k * B + b``.
    """
    stride = int(tile * (1 - overlap))
    steps = math.ceil((image.shape[-1] - tile) / stride) + 1
    tiles = [
        image[..., row * stride : row * stride + tile, col * stride : col * stride + tile]
        for row in range(steps)
        for col in range(steps)
    ]
    return torch.cat(tiles, dim=0)


def merge_tiles(tiles: torch.Tensor, batch: int, trim: int) -> torch.Tensor:
    """Inverse of :func:`split_into_tiles` on feature maps: trim ``trim`` cells from every
    inner tile edge (the overlap) and stitch the tiles into one map."""
    steps = int(math.sqrt(tiles.shape[0] // batch))
    rows = []
    for row in range(steps):
        parts = []
        for col in range(steps):
            index = row * steps + col
            part = tiles[index * batch : (index + 1) * batch]
            if trim:
                top = trim if row != 0 else 0
                left = trim if col != 0 else 0
                bottom = part.shape[-2] - (trim if row != steps - 1 else 0)
                right = part.shape[-1] - (trim if col != steps - 1 else 0)
                part = part[..., top:bottom, left:right]
            parts.append(part)
        rows.append(torch.cat(parts, dim=-1))
    return torch.cat(rows, dim=-2)


class SlidingPyramidEncoder(nn.Module):
    """Encodes the internal image into five feature maps (see module docstring)."""

    def __init__(self, cfg: SharpConfig) -> None:
        super().__init__()
        vit = cfg.vit
        dims = cfg.encoder_dims
        self.patch_size = vit.patch_size
        self.latent_blocks = cfg.vit_hook_blocks[:2]
        self.dims = tuple(dims)

        self.patch_encoder = VisionTransformer(vit, hook_blocks=self.latent_blocks)
        self.image_encoder = VisionTransformer(vit)
        width = vit.embed_dim
        self.upsample_latent0 = project_upsample_block(width, dims[0], 3, dim_intermediate=dims[1])
        self.upsample_latent1 = project_upsample_block(width, dims[1], 2)
        self.upsample0 = project_upsample_block(width, dims[2], 1)
        self.upsample1 = project_upsample_block(width, dims[3], 1)
        self.upsample2 = project_upsample_block(width, dims[4], 1)
        self.upsample_lowres = nn.ConvTranspose2d(width, dims[4], kernel_size=2, stride=2)
        self.fuse_lowres = nn.Conv2d(2 * dims[4], dims[4], kernel_size=1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        batch = image.shape[0]
        # The tile is a quarter of the image (the ViT's native size at the preset's own
        # resolution); inner tile edges lose half of the 25 % overlap: grid / 8 tokens.
        tile = image.shape[-1] // 4
        trim = int(tile // self.patch_size * 0.25 / 2)
        half = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
        quarter = F.interpolate(image, scale_factor=0.25, mode="bilinear", align_corners=False)

        tiles0 = split_into_tiles(image, tile, overlap=0.25)
        tiles1 = split_into_tiles(half, tile, overlap=0.5)
        encoded, hooked = self.patch_encoder(torch.cat((tiles0, tiles1, quarter), dim=0))
        enc0, enc1, enc2 = torch.split(encoded, [len(tiles0), len(tiles1), len(quarter)], dim=0)

        # Intermediate tokens of the full-resolution tiles give the two finest maps.
        n0 = len(tiles0)
        to_map = self.patch_encoder.tokens_to_map
        latent0 = merge_tiles(to_map(hooked[self.latent_blocks[0]][:n0]), batch, trim)
        latent1 = merge_tiles(to_map(hooked[self.latent_blocks[1]][:n0]), batch, trim)
        features0 = merge_tiles(enc0, batch, trim)
        features1 = merge_tiles(enc1, batch, 2 * trim)

        lowres, _ = self.image_encoder(quarter)
        features2 = self.upsample2(enc2)
        lowres = self.fuse_lowres(torch.cat((features2, self.upsample_lowres(lowres)), dim=1))
        return [
            self.upsample_latent0(latent0),
            self.upsample_latent1(latent1),
            self.upsample0(features0),
            self.upsample1(features1),
            lowres,
        ]
