"""EWA projection of 3D Gaussians to 2D image-space Gaussians (pure PyTorch).

For a splat with world covariance ``Σ`` and camera-space centre ``(x, y, z)``, the image
covariance is ``J W Σ Wᵀ Jᵀ + ε I`` with ``W`` the world-to-camera rotation and ``J`` the
Jacobian of the perspective projection at the centre,
``J = [[fx/z, 0, -fx x/z²], [0, fy/z, -fy y/z²]]`` (Zwicker et al., EWA splatting).
``x/z`` and ``y/z`` are clamped to 1.3× the field of view inside ``J`` only, as 3DGS and
gsplat do, so splats far off-screen do not get absurd footprints. ``ε`` (``low_pass``,
default 0.3 px², as 3DGS) is a low-pass filter that keeps sub-pixel splats from aliasing.

A splat reaches a pixel at squared Mahalanobis distance ``d²`` with alpha
``min(0.99, o exp(-d²/2))``, skipped below 1/255; it can therefore only touch pixels with
``d² <= 2 ln(255 o)`` (at most 3.33 sigma, gsplat's radius). That ellipse's bounding box,
``± sqrt(2 ln(255 o) Σ2d_ii)`` per axis, is the exact support used for binning and
culling: no pixel outside it could receive any colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsharp.render.camera import Camera
from mlsharp.render.scene import ALPHA_THRESHOLD, SceneTensors

#: Splats closer to the camera plane than this (scene units) are culled (gsplat's default).
NEAR_PLANE = 0.01
#: Default screen-space low-pass filter (3DGS's 0.3 px² dilation).
LOW_PASS = 0.3


@dataclass
class Splats2D:
    """Projected splats that touch the image (M of them), in no particular order.

    Attributes:
        means: (M, 2) pixel coordinates of the centres (pixel centres at ``i + 0.5``).
        conics: (M, 3) inverse 2D covariance ``(a, b, c)``: ``d² = a dx² + 2 b dx dy + c dy²``.
        opacities: (M,) opacities.
        colors: (M, 3) colours.
        depths: (M,) camera-space z (the compositing order).
        extents: (M, 2) half-width and half-height in pixels of the support box.
    """

    means: torch.Tensor
    conics: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    depths: torch.Tensor
    extents: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    def select(self, index: torch.Tensor) -> Splats2D:
        """The splats at ``index`` (a boolean mask or integer indices), in that order."""
        if index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)
        return Splats2D(
            *(
                values.index_select(0, index)
                for values in (
                    self.means,
                    self.conics,
                    self.opacities,
                    self.colors,
                    self.depths,
                    self.extents,
                )
            )
        )


def support_extents(cov2d_diag: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """(M, 2) half-sizes of the box outside which alpha < 1/255 (see the module doc)."""
    d2max = 2.0 * torch.log((opacities / ALPHA_THRESHOLD).clamp_min(1.0))
    # A hair of slack so float rounding at the boundary never drops a contributing pixel.
    return torch.sqrt(d2max[:, None] * cov2d_diag) + 1e-3


def project(
    scene: SceneTensors,
    camera: Camera,
    *,
    low_pass: float = LOW_PASS,
    near: float = NEAR_PLANE,
) -> Splats2D:
    """Project ``scene`` into ``camera``; returns only the splats whose support box
    overlaps the image and that lie beyond the near plane."""
    device = scene.device
    rotation = torch.as_tensor(camera.rotation, dtype=torch.float32, device=device)
    translation = torch.as_tensor(camera.translation, dtype=torch.float32, device=device)
    # Depth first, to drop everything behind the camera before the heavier maths.
    z_all = scene.means @ rotation[2] + translation[2]
    index = torch.nonzero(z_all > near).squeeze(1)
    means_cam = scene.means.index_select(0, index) @ rotation.T + translation
    x, y, z = means_cam.unbind(-1)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    width, height = camera.width, camera.height

    # Jacobian with the view-frustum clamp of 3DGS/gsplat (1.3x the field of view).
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u_ratio = (x / z).clamp(-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    v_ratio = (y / z).clamp(-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    inv_z = 1.0 / z
    # T = J W: rows (fx/z)(W0 - u W2) and (fy/z)(W1 - v W2).
    t0 = (fx * inv_z)[:, None] * (rotation[0] - u_ratio[:, None] * rotation[2])
    t1 = (fy * inv_z)[:, None] * (rotation[1] - v_ratio[:, None] * rotation[2])
    cov3d = scene.covariances.index_select(0, index)
    s_t0 = (cov3d * t0[:, None, :]).sum(-1)  # Σ t0ᵀ, (M, 3)
    s_t1 = (cov3d * t1[:, None, :]).sum(-1)
    a = (t0 * s_t0).sum(-1) + low_pass
    b = (t1 * s_t0).sum(-1)
    c = (t1 * s_t1).sum(-1) + low_pass
    det = (a * c - b * b).clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x * inv_z + cx, fy * y * inv_z + cy], dim=-1)
    opacities = scene.opacities.index_select(0, index)
    extents = support_extents(torch.stack([a, c], dim=-1), opacities)

    lo = means2d - extents
    hi = means2d + extents
    on_screen = (hi[:, 0] > 0) & (lo[:, 0] < width) & (hi[:, 1] > 0) & (lo[:, 1] < height)
    on_screen &= torch.isfinite(conics).all(-1) & torch.isfinite(extents).all(-1)
    keep = torch.nonzero(on_screen).squeeze(1)
    return Splats2D(
        means=means2d.index_select(0, keep),
        conics=conics.index_select(0, keep),
        opacities=opacities.index_select(0, keep),
        colors=scene.colors.index_select(0, index.index_select(0, keep)),
        depths=z.index_select(0, keep),
        extents=extents.index_select(0, keep),
    )
