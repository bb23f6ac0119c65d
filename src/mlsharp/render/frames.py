"""The entry points: render a scene through cameras, or one preview still.

``render_frames(gaussians, cameras)`` picks a backend (``auto``: gsplat on NVIDIA CUDA when
it is installed, else the pure-PyTorch rasterizer, also on ROCm), uploads the scene once
and yields one uint8 sRGB image per camera. With ``auto``, a gsplat whose CUDA build
cannot run (its first frame fails to build, load or launch its kernels) is replaced by
the PyTorch rasterizer with one warning; with ``gsplat`` asked for by name that is an
error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch

from mlsharp.errors import ConfigError, DeviceError
from mlsharp.gaussians import Gaussians
from mlsharp.render.camera import Camera, camera_at, output_size
from mlsharp.render.color import Background, parse_background, srgb_to_linear, to_uint8
from mlsharp.render.gsplat_backend import gsplat_available, gsplat_failure, rasterize_gsplat
from mlsharp.render.project import LOW_PASS
from mlsharp.render.scene import SceneTensors
from mlsharp.render.torch_backend import DEFAULT_TILE_SIZE, rasterize_torch

Backend = Literal["auto", "torch", "gsplat"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "gsplat")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend (``torch`` or ``gsplat``) for ``backend`` on ``device``.

    Raises:
        ConfigError: unknown backend name, or ``gsplat`` asked for but not installed.
        DeviceError: ``gsplat`` asked for on a device other than CUDA.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown render backend {backend!r} (choose from: {', '.join(BACKENDS)})"
        )
    if backend == "auto":
        return "gsplat" if gsplat_available(device) else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise DeviceError(f"the gsplat backend needs a CUDA device, not {device.type!r}")
        if getattr(torch.version, "hip", None) is not None:
            raise DeviceError("the gsplat backend is CUDA only, not ROCm: use --backend torch")
        if not gsplat_available(device):
            raise ConfigError(
                "the gsplat backend needs the gsplat package "
                "(pip install 'mlsharp[render-cuda]', or pip install gsplat)"
            )
    return backend


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from mlsharp.device import resolve_device

    return resolve_device(device)


def render_frames(
    gaussians: Gaussians,
    cameras: Sequence[Camera],
    *,
    backend: Backend = "auto",
    device: str | torch.device = "auto",
    background: str | Sequence[float] = "black",
    low_pass: float = LOW_PASS,
    tile_size: int = DEFAULT_TILE_SIZE,
    chunk: int | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Iterator[np.ndarray]:
    """Render ``gaussians`` through each camera; yields (H, W, 3) uint8 sRGB images.

    Options are checked (and the scene is uploaded to the device) before the first frame
    is asked for, so bad options fail at the call rather than during iteration.

    Args:
        gaussians: the scene (OpenCV camera frame).
        cameras: the views, e.g. from :func:`~mlsharp.render.trajectory.make_trajectory`.
        backend: ``auto`` (gsplat on CUDA when installed, else ``torch``), ``torch`` or
            ``gsplat``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        background: ``black``, ``white``, ``#rrggbb`` or three sRGB floats in [0, 1].
        low_pass: screen-space dilation in px² (3DGS: 0.3; Apple's renderer uses 0).
        tile_size, chunk: pure-PyTorch rasterizer knobs (ignored by gsplat).
        on_warning: called with a message when ``auto`` falls back from an unusable
            gsplat (default: :func:`warnings.warn`).

    Raises:
        ConfigError, DeviceError: invalid backend, device or background.
    """
    torch_device = _device(device)
    chosen = resolve_backend(backend, torch_device)
    bg_srgb = torch.tensor(parse_background(background), dtype=torch.float32)
    scene = SceneTensors.from_gaussians(gaussians, torch_device)
    bg = srgb_to_linear(bg_srgb) if scene.linear else bg_srgb
    knobs = {"tile_size": tile_size} | ({"chunk": chunk} if chunk else {})
    warn = on_warning or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))

    def torch_frame(camera: Camera) -> torch.Tensor:
        return rasterize_torch(scene, camera, bg, low_pass=low_pass, **knobs)[0]

    def frames() -> Iterator[np.ndarray]:
        rasterize = torch_frame
        if chosen == "gsplat":
            rasterize = _GsplatOrFallback(
                scene, bg, low_pass, fallback=torch_frame if backend == "auto" else None, warn=warn
            )
        for camera in cameras:
            yield to_uint8(rasterize(camera), linear=scene.linear).cpu().numpy()

    return frames()


class _GsplatOrFallback:
    """gsplat per frame; if its very first frame shows the CUDA build unusable, the
    fallback rasterizer for this and every later frame (one warning), or, without a
    fallback (``--backend gsplat``), one clear :class:`ConfigError`. A failure after a
    frame worked is a real error and propagates."""

    def __init__(
        self,
        scene: SceneTensors,
        background: torch.Tensor,
        low_pass: float,
        *,
        fallback: Callable[[Camera], torch.Tensor] | None,
        warn: Callable[[str], None],
    ) -> None:
        self.scene, self.background, self.low_pass = scene, background, low_pass
        self.fallback, self.warn = fallback, warn
        self.worked = False
        self.failed = False

    def __call__(self, camera: Camera) -> torch.Tensor:
        if self.failed and self.fallback is not None:
            return self.fallback(camera)
        try:
            image, _ = rasterize_gsplat(self.scene, camera, self.background, low_pass=self.low_pass)
        except Exception as error:
            reason = None if self.worked else gsplat_failure(error)
            if reason is None:
                raise
            if self.fallback is None:
                raise ConfigError(
                    f"gsplat is installed but cannot render here ({reason}); "
                    "use --backend torch (or auto)"
                ) from None
            self.failed = True
            self.warn(
                f"gsplat is installed but cannot render here ({reason}); "
                "rendering with the PyTorch rasterizer instead"
            )
            return self.fallback(camera)
        self.worked = True
        return image


def render_preview(
    gaussians: Gaussians,
    width: int | None = None,
    height: int | None = None,
    *,
    max_side: int = 512,
    backend: Backend = "auto",
    device: str | torch.device = "cpu",
    background: str | Background = "black",
) -> np.ndarray:
    """One still from the photo's own viewpoint, as an (H, W, 3) uint8 sRGB array.

    With neither ``width`` nor ``height`` the photo's aspect ratio is fitted into
    ``max_side``; with one of them the other follows the aspect ratio. Use
    :func:`~mlsharp.render.video.encode_png` for PNG bytes (e.g. a thumbnail).
    """
    size = output_size(gaussians.image_size, width, height, max_side=max_side)
    frames = render_frames(
        gaussians,
        [camera_at(gaussians, size)],
        backend=backend,
        device=device,
        background=background,
    )
    return next(iter(frames))
