"""A scene's splats as float32 tensors on the rendering device, prepared once per scene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlsharp.gaussians import Gaussians

#: Alpha below which a splat's contribution is skipped (3DGS / gsplat: 1/255). A splat
#: whose opacity is below it can never contribute anywhere.
ALPHA_THRESHOLD = 1.0 / 255.0


def quaternions_to_matrices(quaternions: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here, -> (N, 3, 3) rotation matrices."""
    q = quaternions / quaternions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


@dataclass
class SceneTensors:
    """The splats of a scene that can contribute to an image, on one device.

    Splats with an opacity below :data:`ALPHA_THRESHOLD` (or non-finite values) are
    dropped. Attributes (N = kept splats): ``means`` (N, 3), ``covariances`` (N, 3, 3)
    world-space 3D covariances ``R S² Rᵀ``, ``opacities`` (N,), ``colors`` (N, 3) and,
    for the gsplat backend, the normalised ``quaternions`` (N, 4) and ``scales`` (N, 3).
    ``linear`` tells whether the colours are linear RGB (then images are sRGB-encoded).
    """

    means: torch.Tensor
    covariances: torch.Tensor
    quaternions: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    linear: bool

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        """The device the tensors live on."""
        return self.means.device

    @classmethod
    def from_gaussians(cls, gaussians: Gaussians, device: torch.device) -> SceneTensors:
        """Upload ``gaussians`` to ``device`` as float32, dropping invisible splats."""
        arrays = {
            "means": gaussians.positions,
            "quaternions": gaussians.rotations,
            "scales": gaussians.scales,
            "opacities": gaussians.opacities,
            "colors": gaussians.colors,
        }
        keep = np.asarray(gaussians.opacities) >= ALPHA_THRESHOLD
        for array in arrays.values():
            values = np.asarray(array, dtype=np.float32)
            keep &= np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32)[keep])).to(
                device
            )
            for name, a in arrays.items()
        }
        quats = tensors["quaternions"]
        quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        spans = quaternions_to_matrices(quats) * tensors["scales"][:, None, :]
        return cls(
            means=tensors["means"],
            covariances=spans @ spans.transpose(1, 2),
            quaternions=quats,
            scales=tensors["scales"],
            opacities=tensors["opacities"].clamp(max=1.0),
            colors=tensors["colors"],
            linear=gaussians.color_space == "linearRGB",
        )
