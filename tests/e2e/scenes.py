"""Synthetic scenes with a known layout, written through :mod:`mlsharp.splat`."""

from __future__ import annotations

import numpy as np

from mlsharp.gaussians import Gaussians


def marker_scene(per_blob: int = 2000, depth: float = 3.0, seed: int = 0) -> Gaussians:
    """Three blobs in the model's OpenCV frame (+x right, +y down), ``depth`` ahead: red
    above the centre, blue below it, green to the left.

    Seen from the photo's camera (the origin, looking down +z) red must be in the top half
    of the picture, blue in the bottom half and green in the left half: a flip of either
    axis, or a mirror image, moves one of them.
    """
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, -0.45, depth], [0.0, 0.45, depth], [-0.6, 0.0, depth]])
    offsets = rng.normal(0.0, 0.12, size=(len(centres) * per_blob, 3))
    positions = (np.repeat(centres, per_blob, axis=0) + offsets).astype(np.float32)
    colors = np.repeat(np.eye(3)[[0, 2, 1]], per_blob, axis=0)  # red, blue, green
    n = len(positions)
    rotations = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (n, 1))
    return Gaussians(
        positions=positions,
        scales=np.full((n, 3), 0.03, dtype=np.float32),
        rotations=rotations.astype(np.float32),
        colors=colors.astype(np.float32),
        opacities=np.full(n, 0.9, dtype=np.float32),
        focal_px=600.0,
        image_size=(800, 600),
    )


def large_scene(width: int = 768, height: int = 768, layers: int = 2) -> Gaussians:
    """A SHARP-sized scene (``width * height * layers`` splats, 1.18 M by default): a tilted
    textured wall and a noisy background layer, one splat per pixel and layer."""
    rng = np.random.default_rng(0)
    focal = 0.9 * width
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    u, v = u.ravel(), v.ravel()
    depths = [2.0 + 0.3 * np.sin(u / 50.0) + v / height]
    depths += [4.0 + rng.random(u.size) for _ in range(layers - 1)]
    z = np.concatenate(depths)
    uu, vv = np.tile(u, layers), np.tile(v, layers)
    positions = np.stack([(uu - width / 2) / focal * z, (vv - height / 2) / focal * z, z], axis=1)
    colors = np.stack([uu / width, vv / height, np.full_like(uu, 0.5)], axis=1)
    n = len(positions)
    return Gaussians(
        positions=positions.astype(np.float32),
        scales=np.repeat((z / focal * 0.8)[:, None], 3, axis=1).astype(np.float32),
        rotations=np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (n, 1)),
        colors=colors.astype(np.float32),
        opacities=np.full(n, 0.9, dtype=np.float32),
        focal_px=float(focal),
        image_size=(width, height),
    )
