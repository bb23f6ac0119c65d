"""A plain-PyTorch DINOv2-style Vision Transformer with timm's parameter names.

SHARP's checkpoint stores its two ViT-L/16 encoders under timm ``VisionTransformer`` names
(``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``, ...). timm itself is
not usable here (it imports torchvision), so this module rebuilds the same computation:

    tokens = [cls] + conv16x16(image)          # (B, 1 + g*g, C)
    tokens += pos_embed                        # learned, includes the cls position
    for each block:                            # pre-norm, LayerScale on both branches
        x = x + gamma1 * attn(LN(x))
        x = x + gamma2 * mlp(LN(x))            # GELU (exact erf form)
    out = LN(x)

Images of another size than ``img_size`` (another internal resolution, see
``SharpConfig.valid_resolutions``) use the learned position embedding resampled bicubically
to their token grid, as DINOv2 does; at ``img_size`` it is used as stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlsharp.model.config import ViTConfig
from mlsharp.model.layers import Fp32LayerNorm, fp32_region


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, S, S) -> (B, g*g, C)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # SDPA picks the fastest kernel available on the device (flash / memory-efficient /
        # math); all compute softmax(q k^T / sqrt(d)) v.
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Two-layer feed-forward network with exact GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned residual scaling (``gamma`` in the checkpoint)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = Fp32LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = Fp32LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """The ViT used twice by SHARP: as patch encoder (tiles) and image encoder (overview).

    ``forward`` returns the final normalised feature map (B, C, g, g) and the raw token
    sequences after the blocks listed in ``hook_blocks`` (used for high-resolution features).
    """

    def __init__(self, cfg: ViTConfig, hook_blocks: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.hook_blocks = tuple(hook_blocks)
        num_tokens = cfg.grid_size**2 + 1
        # Registration order matches the checkpoint's key order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.embed_dim))
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = Fp32LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        # Classification head of the pretraining task: never called, kept so the released
        # checkpoint loads strictly.
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the cls token and fold (B, 1 + g*g, C) into a (B, C, g, g) map."""
        batch, count, channels = tokens.shape
        grid = math.isqrt(count - 1)
        return tokens[:, 1:, :].reshape(batch, grid, grid, channels).permute(0, 3, 1, 2)

    def position_embedding(self, grid: int) -> torch.Tensor:
        """The (1, 1 + grid**2, C) position embedding for a ``grid`` x ``grid`` token image.

        The stored embedding is for ``cfg.grid_size``; other grids get its patch part
        resampled (bicubic, corners not aligned); the cls position is kept.
        """
        if grid == self.cfg.grid_size:
            return self.pos_embed
        stored = self.cfg.grid_size
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, stored, stored, -1).permute(0, 3, 1, 2).float()
        with fp32_region(patch_pos.device):
            patch_pos = F.interpolate(
                patch_pos, size=(grid, grid), mode="bicubic", align_corners=False
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
        return torch.cat((cls_pos, patch_pos.to(cls_pos.dtype)), dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x = self.patch_embed(image)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        grid = image.shape[-1] // self.cfg.patch_size
        x = torch.cat((cls, x), dim=1) + self.position_embedding(grid)
        hooked: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.hook_blocks:
                hooked[index] = x
        return self.tokens_to_map(self.norm(x)), hooked
