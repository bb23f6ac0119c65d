"""Fixtures of the independent checks (tests/npmtools.py runs the third-party readers)."""

from __future__ import annotations

import numpy as np

from mlsharp.gaussians import Gaussians
from tests.npmtools import npm_tools

__all__ = ["far_scene", "npm_tools"]


def far_scene(n: int = 4000, seed: int = 3) -> Gaussians:
    """A SHARP-like scene: splats 1-10 m ahead, and 2 % of them 1-5 km away (as SHARP's far
    background layer puts them), with varied scales, rotations, colours and opacities."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1.0, 10.0, n)
    far = rng.random(n) < 0.02
    depth[far] = rng.uniform(1000.0, 5000.0, far.sum())
    xy = rng.uniform(-0.6, 0.6, (n, 2)) * depth[:, None]
    positions = np.column_stack([xy, depth]).astype(np.float32)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return Gaussians(
        positions=positions,
        scales=np.exp(rng.uniform(-7.0, -1.0, (n, 3))).astype(np.float32),
        rotations=quats.astype(np.float32),
        colors=rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32),
        opacities=rng.uniform(0.05, 0.99, n).astype(np.float32),
        focal_px=700.0,
        image_size=(640, 480),
    )
