"""From the network's NDC-scaled output to metric camera space, vectorised.

The network places Gaussians in a space where ``x = z * x_ndc`` with NDC spanning the
internal square image. Undoing the internal resize and the intrinsics is a per-axis scale
``T = diag(W / (2 f), H / (2 f), 1)`` (the principal point sits at the image centre, so
there is no offset). Means map as ``T @ mu``; covariances as ``T R S^2 R^T T``, which are
then re-diagonalised into sorted scales and a rotation, as the reference does.

The reference does that with a float64 SVD on the CPU and a per-matrix SciPy conversion;
here one batched symmetric eigendecomposition in float64 on the engine's device and a
closed-form matrix-to-quaternion conversion produce the same values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlsharp.gaussians import Gaussians
from mlsharp.model.composer import ComposedGaussians


def quaternions_to_matrices(quaternions: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = quaternions / torch.linalg.norm(quaternions, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def matrices_to_quaternions(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z).

    Shepperd's method: of the four algebraically equivalent formulas, use the one whose
    pivot (trace or a diagonal entry) is largest, which keeps the division well away from
    zero. All four are evaluated and the best is gathered per matrix.
    """
    m = matrices
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack(
                [
                    1 + m00 + m11 + m22,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m00 - m11 - m22,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m00 + m11 - m22,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m00 - m11 + m22,
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4 components); candidate k has 4 * q_k^2 at component k
    pivots = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    best = pivots.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    quaternion = torch.gather(candidates, -2, index).squeeze(-2)
    return quaternion / torch.linalg.norm(quaternion, dim=-1, keepdim=True)


def _principal_axes(covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric PSD (N, 3, 3) -> (scales descending (N, 3), proper rotations (N, 3, 3))."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
    eigenvalues = eigenvalues.flip(-1).clamp_min(0)
    rotations = eigenvectors.flip(-1)
    # An eigenbasis may be a reflection; flipping the last axis makes it a rotation.
    reflected = torch.linalg.det(rotations) < 0
    rotations[..., :, 2] = torch.where(
        reflected[:, None], -rotations[..., :, 2], rotations[..., :, 2]
    )
    return eigenvalues.sqrt(), rotations


def unproject(
    composed: ComposedGaussians,
    *,
    focal_px: float,
    image_size: tuple[int, int],
    index: int = 0,
) -> Gaussians:
    """Convert batch item ``index`` of the network output to metric :class:`Gaussians`.

    Args:
        composed: network output (B, N, C) tensors on any device.
        focal_px: focal length in pixels of the input image.
        image_size: (width, height) of the input image.
        index: which batch item to convert.
    """
    width, height = image_size
    device = composed.mean_vectors.device
    # float64 on MPS is unsupported: decompose on the CPU there.
    work_device = torch.device("cpu") if device.type == "mps" else device
    axis_scale = torch.tensor(
        [width / (2.0 * focal_px), height / (2.0 * focal_px), 1.0],
        dtype=torch.float64,
        device=work_device,
    )
    means = composed.mean_vectors[index].to(work_device, torch.float64) * axis_scale
    rotations = quaternions_to_matrices(composed.quaternions[index].to(work_device, torch.float64))
    scales = composed.singular_values[index].to(work_device, torch.float64)
    # Columns of T R S span the covariance: cov = (T R S)(T R S)^T.
    spans = axis_scale[:, None] * rotations * scales[:, None, :]
    new_scales, new_rotations = _principal_axes(spans @ spans.transpose(-1, -2))
    quaternions = matrices_to_quaternions(new_rotations)

    def host(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

    depth = None
    if composed.depth is not None:
        # The network's depth is square (internal resolution); stretch it back to the photo.
        depth_map = composed.depth[index][None, None].float()
        depth = host(F.interpolate(depth_map, size=(height, width), mode="bilinear")[0, 0])

    return Gaussians(
        positions=host(means),
        scales=host(new_scales),
        rotations=host(quaternions),
        colors=host(composed.colors[index]),
        opacities=host(composed.opacities[index]),
        focal_px=float(focal_px),
        image_size=(int(width), int(height)),
        color_space="linearRGB",
        depth=depth,
    )
