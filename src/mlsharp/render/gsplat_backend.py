"""The gsplat backend (NVIDIA CUDA only; not ROCm). gsplat is imported lazily, never on a
CPU-only path. Install it with the ``render-cuda`` extra (``pip install 'mlsharp[render-cuda]'``).

gsplat takes the same OpenCV camera convention (world-to-camera ``viewmats``, ``Ks``
with pixel centres at ``i + 0.5``) and quaternions in (w, x, y, z) order, so the scene's
arrays are passed as they are. Its "classic" mode is the 3DGS compositing that
:mod:`mlsharp.render.composite` reproduces.
"""

from __future__ import annotations

import importlib.util

import torch

from mlsharp.render.camera import Camera
from mlsharp.render.project import LOW_PASS, NEAR_PLANE
from mlsharp.render.scene import SceneTensors


def gsplat_usable(device_type: str, hip_version: str | None, installed: bool) -> bool:
    """Whether gsplat can render on a device of ``device_type`` (facts in, answer out).

    gsplat ships CUDA kernels only. A ROCm build of torch reports its AMD GPUs as device
    type ``"cuda"`` too, with ``torch.version.hip`` set: those render with the PyTorch
    rasterizer.
    """
    return device_type == "cuda" and hip_version is None and installed


def gsplat_installed() -> bool:
    """Whether the gsplat package is installed (found, not imported)."""
    return importlib.util.find_spec("gsplat") is not None


def gsplat_available(device: torch.device) -> bool:
    """Whether the gsplat backend can run on ``device`` (NVIDIA CUDA, gsplat installed).

    Only checks that the package is installed; gsplat itself is not imported.
    """
    hip = getattr(torch.version, "hip", None)
    return gsplat_usable(device.type, hip, device.type == "cuda" and gsplat_installed())


@torch.no_grad()
def rasterize_gsplat(
    scene: SceneTensors,
    camera: Camera,
    background: torch.Tensor,
    *,
    low_pass: float = LOW_PASS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``scene`` through ``camera`` with gsplat; same contract as
    :func:`~mlsharp.render.torch_backend.rasterize_torch`."""
    import gsplat  # lazy: CUDA-only, JIT-builds its kernels on first use

    device = scene.device
    viewmat = torch.as_tensor(camera.viewmat, device=device)[None]
    intrinsics = torch.as_tensor(camera.intrinsics, device=device)[None]
    colors, alphas, _ = gsplat.rasterization(
        means=scene.means,
        quats=scene.quaternions,
        scales=scene.scales,
        opacities=scene.opacities,
        colors=scene.colors,
        viewmats=viewmat,
        Ks=intrinsics,
        width=camera.width,
        height=camera.height,
        near_plane=NEAR_PLANE,
        eps2d=low_pass,
        backgrounds=background.to(device=device, dtype=torch.float32)[None],
        render_mode="RGB",
        rasterize_mode="classic",
        packed=False,
    )
    return colors[0], alphas[0, ..., 0]
