"""Base Gaussians from depth, and composition of base values with predicted deltas.

Parameter-free steps of SHARP, in the network's normalised space:

* :func:`initialize` rescales the depth so its minimum is 1 (``global_scale`` undoes that at
  the end), builds one Gaussian per 2x2 pixels per depth layer on the surface given by the
  depth (pooled to the grid), and prepares the decoder input (RGB + disparity in [-1, 1]).
* :func:`compose` adds the predicted deltas through the reference's activations and
  returns flattened per-Gaussian tensors in NDC-scaled camera space (``x = z * x_ndc``).

Every constant and the order of floating-point operations follow the reference so the
result matches it to float32 rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# The smallest depth after normalisation and the clamp applied to far depths.
DEPTH_MIN = 1.0
DEPTH_MAX = 100.0
# Factors applied to the deltas before activation (smaller = slower-moving attribute).
DELTA_XY = 0.001
DELTA_Z = 0.001
DELTA_COLOR = 0.1
# Scale activation: scale = base * (MAX_SCALE * sigmoid(a * delta + b)), a/b chosen so a
# zero delta keeps the base scale with unit slope.
MAX_SCALE = 10.0
SCALE_SLOPE = MAX_SCALE / 1.0 / (MAX_SCALE - 1.0)


class BaseGaussians(NamedTuple):
    """Initial Gaussian values on the grid, shaped (B, C, layers, H, W) or broadcastable."""

    x_ndc: torch.Tensor
    y_ndc: torch.Tensor
    disparity: torch.Tensor
    scales: torch.Tensor
    quaternions: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor


class Initialization(NamedTuple):
    """Output of :func:`initialize`."""

    base: BaseGaussians
    network_input: torch.Tensor
    global_scale: torch.Tensor


class ComposedGaussians(NamedTuple):
    """Per-Gaussian tensors (B, N, C) in metric, NDC-scaled space, before unprojection."""

    mean_vectors: torch.Tensor
    singular_values: torch.Tensor
    quaternions: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor
    #: (B, S, S) metric depth of the first depth layer at the internal resolution, when the
    #: caller attached it (``SharpModel.forward`` does); the Gaussians' z uses the same units.
    depth: torch.Tensor | None = None


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """logit(x) = log(x / (1 - x))."""
    return torch.log(x / (1.0 - x))


# logit(1 / MAX_SCALE) rounded through float32 exactly as the reference computes it; a
# module constant (not a tensor.item() per call) keeps the forward free of host syncs, so
# torch.compile and CUDA graphs see one graph.
_SCALE_OFFSET = inverse_sigmoid(torch.tensor(1.0 / MAX_SCALE)).item()


def inverse_softplus(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of softplus, written as the reference does for identical rounding."""
    x = x.clamp_min(eps)
    sig = torch.sigmoid(-x)
    return x + torch.log(-(sig / (1.0 - sig)) + 1.0)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear RGB transfer function (the network's colours are linear)."""
    threshold = 0.04045
    safe = torch.where(x <= threshold, threshold, x)  # keep the power branch finite
    return torch.where(x <= threshold, x / 12.92, ((safe + 0.055) / 1.055) ** 2.4)


def _filled(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A float32 vector of ``values`` made by fills on ``device`` (no host-to-device copy).

    ``out[i].fill_(v)`` passes ``v`` to the fill kernel as an argument. ``out[i] = v``
    would not: Python indexing first wraps ``v`` in a CPU tensor and copies it into the
    device tensor, a host-to-device copy per element that CUDA graph capture forbids.
    """
    out = torch.empty(len(values), device=device)
    for index, value in enumerate(values):
        out[index].fill_(value)
    return out


def _grid_ndc(size: int, stride: int, batch: int, layers: int, device: torch.device):
    centres = torch.arange(0.5 * stride, size, stride, device=device)
    centres = 2 * centres / size - 1.0
    xx, yy = torch.meshgrid(centres, centres, indexing="xy")
    x_ndc = xx[None, None, None].repeat(batch, 1, layers, 1, 1)
    y_ndc = yy[None, None, None].repeat(batch, 1, layers, 1, 1)
    return x_ndc, y_ndc


def _surface_disparity(depth: torch.Tensor, stride: int) -> torch.Tensor:
    # Max-pooling disparity keeps the nearest surface in each cell.
    return torch.max_pool2d(1.0 / depth, stride, stride)[:, :, None]


def initialize(image: torch.Tensor, depth: torch.Tensor, stride: int = 2) -> Initialization:
    """Build base Gaussians and the decoder input from an image and its layered depth.

    Args:
        image: (B, 3, S, S) pixels in [0, 1] at the internal resolution.
        depth: (B, L, S, S) metric depth per layer (L = 2 for SHARP).
        stride: pixels per Gaussian cell side.
    """
    batch, layers, height, width = depth.shape
    if height != width:
        raise ValueError("the internal image must be square")
    depth_factor = DEPTH_MIN / (depth.flatten(1).min(dim=-1).values + 1e-6)
    depth = (depth * depth_factor[:, None, None, None]).clamp(max=DEPTH_MAX)

    disparity = torch.cat(
        [_surface_disparity(depth[:, layer : layer + 1], stride) for layer in range(layers)],
        dim=2,
    )
    x_ndc, y_ndc = _grid_ndc(width, stride, batch, layers, depth.device)
    scale_factor = 2 * 1.0 * stride / float(width)
    base_scales = torch.ones_like(disparity) / disparity * scale_factor
    # Constants are filled on the device (no host-to-device copy), which keeps the forward
    # capturable in a CUDA graph.
    quaternions = _filled((1.0, 0.0, 0.0, 0.0), depth.device)[None, :, None, None, None]
    opacities = _filled((min(1.0 / layers, 0.5),), depth.device)
    colors = F.avg_pool2d(image, stride, stride)[:, :, None].repeat(1, 1, layers, 1, 1)

    network_input = 2.0 * torch.cat([image, 1.0 / depth], dim=1) - 1.0
    base = BaseGaussians(x_ndc, y_ndc, disparity, base_scales, quaternions, colors, opacities)
    return Initialization(base=base, network_input=network_input, global_scale=1.0 / depth_factor)


def _flatten(t: torch.Tensor) -> torch.Tensor:
    """(B, C, L, H, W) -> (B, L*H*W, C): layer-major, then rows, then columns."""
    return t.permute(0, 2, 3, 4, 1).flatten(1, 3)


def compose(
    delta: torch.Tensor, base: BaseGaussians, global_scale: torch.Tensor
) -> ComposedGaussians:
    """Apply the predicted deltas (B, 14, L, H, W) to the base values."""
    factors = _filled((DELTA_XY, DELTA_XY, DELTA_Z), delta.device)
    offsets = factors[None, :, None, None, None] * delta[:, :3]
    xx = base.x_ndc + offsets[:, 0:1]
    yy = base.y_ndc + offsets[:, 1:2]
    inverse_z = F.softplus(inverse_softplus(base.disparity) + offsets[:, 2:3])
    zz = 1.0 / (inverse_z + 1e-3)
    means = torch.cat([zz * xx, zz * yy, zz], dim=1)

    # The base scale follows the Gaussian when its depth moves.
    base_scales = base.scales * base.disparity * means[:, 2:3]
    scale_offset = _SCALE_OFFSET
    scales = base_scales * (
        MAX_SCALE * torch.sigmoid(SCALE_SLOPE * 1.0 * delta[:, 3:6] + scale_offset) + 0.0
    )
    quaternions = base.quaternions + 1.0 * delta[:, 6:10]
    base_colors = torch.clamp(base.colors, min=0.01, max=0.99)
    colors = srgb_to_linear(
        torch.sigmoid(inverse_sigmoid(base_colors) + DELTA_COLOR * delta[:, 10:13])
    )
    opacities = torch.sigmoid(inverse_sigmoid(base.opacities) + 1.0 * delta[:, 13])

    scale = global_scale[:, None, None]
    return ComposedGaussians(
        mean_vectors=scale * _flatten(means),
        singular_values=scale * _flatten(scales),
        quaternions=_flatten(quaternions),
        colors=_flatten(colors),
        opacities=opacities.flatten(1, 3),
    )


__all__ = ["compose", "initialize", "inverse_sigmoid", "inverse_softplus"]
