"""The full-size network (random weights at the real scale) on a panorama, once.

At 512 px internal resolution (a third of the native side: 1/9 of the Gaussians and a
small part of the ViT's work) the six views took 181 CPU-seconds on the 2-core test
machine (about 1.5 minutes of both cores); the native 1536 px would take a quarter of an
hour (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlsharp.engine import Engine
from mlsharp.imaging import load_image
from mlsharp.model import build_model, preset
from mlsharp.panorama import layout_views, predict_panorama
from mlsharp.runtime.options import RuntimeOptions
from tests.panorama.room import WALLS, encode, equirect_room
from tests.panorama.seams import seam_stats


@pytest.mark.slow
def test_the_sharp_preset_predicts_a_panorama():
    torch.manual_seed(0)
    engine = Engine.from_model(
        build_model("sharp"), torch.device("cpu"), options=RuntimeOptions(resolution=512)
    )
    image = load_image(encode(equirect_room(1024)), name="room.png")
    stages: list[str] = []
    scene = predict_panorama(
        engine,
        image,
        max_side=engine.internal_resolution,
        progress=lambda stage, fraction: stages.append(stage),
    )
    assert stages == ["views", *(f"view {k}/6" for k in range(1, 7)), "merge"]
    per_view = preset("sharp").num_gaussians // 9
    assert len(scene) == pytest.approx(6 * per_view / 1.19**2, rel=0.05)
    for values in (scene.positions, scene.scales, scene.rotations, scene.colors):
        assert np.isfinite(values).all()
    info = scene.metadata["panorama"]
    assert [v["side"] for v in info["views"]] == [388] * 6
    assert info["seams"]["samples"] > 500
    # The directions are the panorama's: each wall's colour where the wall is.
    unit = scene.positions / np.linalg.norm(scene.positions, axis=1, keepdims=True)
    for name, ((axis, sign), rgb) in WALLS.items():
        direction = np.zeros(3)
        direction[axis] = sign
        cone = unit @ direction > math.cos(math.radians(15))
        mean = scene.colors[cone].mean(axis=0) ** (1 / 2.2)
        hue = np.dot(mean, rgb) / (np.linalg.norm(mean) * np.linalg.norm(rgb))
        assert hue > 0.95, (name, mean * 255)
    stats = seam_stats(scene.positions, layout_views(), per_view, layers=2)
    assert stats.max_gap < 1.5 and stats.min_layers > 0.5 and stats.max_layers < 1.6, stats
