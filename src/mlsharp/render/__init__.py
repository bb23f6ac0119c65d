"""Rendering scenes to images and videos: camera paths, rasterizers, MP4/PNG output.

    cameras = make_trajectory(gaussians, "orbit", frames=60, size=(768, 576))
    write_mp4(render_frames(gaussians, cameras), "orbit.mp4", (768, 576), fps=30)
    thumbnail = encode_png(render_preview(gaussians, width=256))

Modules (one job each): ``camera`` (pinhole cameras, look-at, output size, NumPy),
``trajectory`` (paths scaled by the scene's depth, NumPy), ``scene`` (splats as device
tensors), ``project`` (EWA projection + culling), ``binning`` (tiles, depth order),
``composite`` (tiled front-to-back alpha compositing), ``torch_backend`` /
``gsplat_backend`` (the two rasterizers), ``color`` (linear -> sRGB), ``frames`` (the entry
points), ``video`` (MP4 / PNG writers). Importing this package does not import torch;
the torch-based names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlsharp.render.camera import Camera, camera_at, look_at, output_size
from mlsharp.render.trajectory import (
    PANORAMA_TRAJECTORIES,
    TRAJECTORIES,
    TrajectoryParams,
    make_trajectory,
)
from mlsharp.render.video import encode_png, write_mp4, write_png

_LAZY = {
    "BACKENDS": "mlsharp.render.frames",
    "render_frames": "mlsharp.render.frames",
    "render_preview": "mlsharp.render.frames",
    "rasterize_torch": "mlsharp.render.torch_backend",
    "SceneTensors": "mlsharp.render.scene",
}

__all__ = [
    "BACKENDS",
    "PANORAMA_TRAJECTORIES",
    "TRAJECTORIES",
    "Camera",
    "SceneTensors",
    "TrajectoryParams",
    "camera_at",
    "encode_png",
    "look_at",
    "make_trajectory",
    "output_size",
    "rasterize_torch",
    "render_frames",
    "render_preview",
    "write_mp4",
    "write_png",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlsharp.render' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
