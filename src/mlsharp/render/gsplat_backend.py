"""The gsplat backend (NVIDIA CUDA only; not ROCm). gsplat is imported lazily, never on a
CPU-only path. Install it with the ``render-cuda`` extra (``pip install 'mlsharp[render-cuda]'``).

gsplat takes the same OpenCV camera convention (world-to-camera ``viewmats``, ``Ks``
with pixel centres at ``i + 0.5``) and quaternions in (w, x, y, z) order, so the scene's
arrays are passed as they are. Its "classic" mode is the 3DGS compositing that
:mod:`mlsharp.render.composite` reproduces, except for the clamp of a splat's alpha, which
differs between the gsplat releases the ``render-cuda`` extra admits
(:func:`gsplat_max_alpha`).

An installed gsplat may still be unusable: its CUDA extension is built on first use and
that build can fail (no compiler, a CUDA toolkit that does not match torch's), or it was
built for other GPUs. :func:`gsplat_failure` tells such an error from a real one, so
``render`` can fall back to the PyTorch rasterizer.
"""

from __future__ import annotations

import importlib
import importlib.util
import re

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


#: gsplat's clamp of a splat's alpha before 1.6: ``min(0.999, ...)`` in its kernels
#: (1.4.0 to 1.5.3). From 1.6 it is a ``MAX_ALPHA`` constant of 0.99, as in 3DGS and in
#: :data:`mlsharp.render.composite.MAX_ALPHA`.
GSPLAT_LEGACY_MAX_ALPHA = 0.999


def max_alpha_for_version(version: str) -> float:
    """gsplat's alpha clamp for its ``version`` string (e.g. ``"1.5.3"``, ``"1.6.0+cu128"``)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a gsplat version: {version!r}")
    major, minor = int(match[1]), int(match[2])
    return GSPLAT_LEGACY_MAX_ALPHA if (major, minor) < (1, 6) else 0.99


def gsplat_max_alpha() -> float:
    """The alpha clamp of the installed gsplat (imports it): its ``MAX_ALPHA`` constant
    where it has one, else the value for its version. Pass it as ``max_alpha`` to
    :func:`~mlsharp.render.torch_backend.rasterize_torch` to compare the two rasterizers."""
    try:
        constants = importlib.import_module("gsplat.cuda._constants")
        return float(constants.MAX_ALPHA)
    except (ImportError, AttributeError):
        gsplat = importlib.import_module("gsplat")
        return max_alpha_for_version(str(gsplat.__version__))


def gsplat_failure(error: BaseException) -> str | None:
    """One line saying why gsplat cannot render here, when ``error`` (raised by importing
    or calling it) means its CUDA build is unusable; ``None`` for any other error, which
    should propagate (out of memory included)."""
    from mlsharp.runtime.memory import out_of_memory_reason

    if not isinstance(error, (ImportError, OSError, RuntimeError, AttributeError)):
        return None
    if out_of_memory_reason(error) is not None:
        return None
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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
