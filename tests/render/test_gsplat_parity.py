"""The gsplat backend against the pure-PyTorch rasterizer (needs CUDA and gsplat).

Skipped cleanly elsewhere; gsplat is only imported once CUDA is known to be present.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mlsharp.render.camera import camera_at
from mlsharp.render.frames import resolve_backend
from mlsharp.render.gsplat_backend import gsplat_max_alpha, rasterize_gsplat
from mlsharp.render.scene import SceneTensors
from mlsharp.render.torch_backend import rasterize_torch
from mlsharp.render.trajectory import make_trajectory
from tests.render.test_rasterizer import scene

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
        reason="the gsplat backend needs CUDA and the gsplat package",
    ),
]


def test_auto_picks_gsplat_on_cuda():
    assert resolve_backend("auto", torch.device("cuda")) == "gsplat"


@pytest.mark.parametrize("view", [0, 3])
def test_gsplat_matches_the_torch_rasterizer(view):
    rng = np.random.default_rng(view)
    n = 5000
    positions = np.stack(
        [rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(1, 8, n)], -1
    )
    quats = rng.normal(size=(n, 4))
    g = scene(
        positions,
        rng.uniform(0.01, 0.2, (n, 3)),
        rng.random((n, 3)),
        rng.uniform(0.05, 1.0, n),
        quats / np.linalg.norm(quats, axis=1, keepdims=True),
        focal=150.0,
        size=(200, 150),
    )
    camera = [camera_at(g, (200, 150)), *make_trajectory(g, "orbit", 6, (200, 150))][view]
    device = torch.device("cuda")
    tensors = SceneTensors.from_gaussians(g, device)
    bg = torch.tensor([0.1, 0.2, 0.3])
    # gsplat 1.4-1.5 clamps a splat's alpha at 0.999, 1.6 at 0.99: compare like with like.
    ours, ours_alpha = rasterize_torch(tensors, camera, bg, max_alpha=gsplat_max_alpha())
    theirs, theirs_alpha = rasterize_gsplat(tensors, camera, bg)
    # gsplat bins with a 3.33-sigma box and we with the exact alpha >= 1/255 ellipse box;
    # both skip alpha < 1/255, so they differ only by float rounding order.
    diff = (ours - theirs).abs()
    assert diff.mean().item() < 1e-4
    assert diff.max().item() < 5e-3
    assert (ours_alpha - theirs_alpha).abs().max().item() < 5e-3
