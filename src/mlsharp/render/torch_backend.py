"""The pure-PyTorch rasterizer: project, bin into tiles, composite. Any torch device."""

from __future__ import annotations

import torch

from mlsharp.render.binning import bin_splats
from mlsharp.render.camera import Camera
from mlsharp.render.composite import DEFAULT_CHUNK, MAX_ALPHA, composite
from mlsharp.render.project import LOW_PASS, project
from mlsharp.render.scene import SceneTensors

#: Tile side in pixels. Smaller tiles evaluate fewer (pixel, splat) pairs outside each
#: splat's footprint but create more pairs to sort; 8 was fastest for model-sized scenes
#: at 512² on a CPU (16: ~3x slower, 4: slightly slower; benchmarks/bench_render.py).
DEFAULT_TILE_SIZE = 8


@torch.no_grad()
def rasterize_torch(
    scene: SceneTensors,
    camera: Camera,
    background: torch.Tensor,
    *,
    low_pass: float = LOW_PASS,
    tile_size: int = DEFAULT_TILE_SIZE,
    chunk: int = DEFAULT_CHUNK,
    budget: int | None = None,
    max_alpha: float = MAX_ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``scene`` through ``camera``.

    Args:
        scene: the splats on the target device.
        camera: the view.
        background: (3,) background colour in the scene's colour space.
        low_pass: screen-space dilation in px² (3DGS: 0.3).
        tile_size, chunk, budget: tiling knobs (see :mod:`mlsharp.render.composite`;
            ``budget=None`` picks the device type's).
        max_alpha: alpha clamp per splat (pass gsplat's to compare with it).

    Returns:
        ``(image (H, W, 3), alpha (H, W))`` float32 on the scene's device, colours in the
        scene's colour space.
    """
    splats = project(scene, camera, low_pass=low_pass)
    bins = bin_splats(splats, camera.width, camera.height, tile_size)
    return composite(
        bins,
        camera.width,
        camera.height,
        background.to(scene.device),
        chunk=chunk,
        budget=budget,
        max_alpha=max_alpha,
    )
