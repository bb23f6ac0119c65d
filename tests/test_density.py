"""``--max-splats`` / ``--min-opacity``: which splats are kept, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from mlsharp.errors import ConfigError
from mlsharp.splat.density import Density, importance, reduce_density
from tests.test_formats import random_scene


def test_keeps_the_most_important_splats_in_their_order() -> None:
    scene = random_scene(1000)
    thin = reduce_density(scene, Density(max_splats=100))
    assert len(thin) == 100
    score = importance(scene)
    kept = np.flatnonzero(np.isin(scene.positions[:, 0], thin.positions[:, 0]))
    assert len(kept) == 100
    assert score[kept].min() >= np.sort(score)[-100]  # the 100 best, no other
    np.testing.assert_array_equal(thin.positions, scene.positions[kept])  # original order
    assert thin.metadata["density"] == {"max_splats": 100, "kept": 100, "of": 1000}
    assert thin.focal_px == scene.focal_px and thin.depth is scene.depth


def test_importance_is_opacity_times_projected_area() -> None:
    scene = random_scene(5)
    s = np.sort(scene.scales.astype(np.float64), axis=1)
    d = np.linalg.norm(scene.positions.astype(np.float64), axis=1)
    expected = scene.opacities * s[:, 2] * s[:, 1] / d**2
    np.testing.assert_allclose(importance(scene), expected, rtol=1e-6)


def test_result_is_deterministic_with_ties_and_drops_nan_first() -> None:
    scene = random_scene(50)
    scene.scales[:] = 0.01
    scene.positions[:, :] = [0.0, 0.0, 2.0]
    scene.opacities[:] = 0.5  # every splat equally important: the first ones win
    scene.positions[3] = np.nan
    thin = reduce_density(scene, Density(max_splats=10))
    again = reduce_density(scene, Density(max_splats=10))
    np.testing.assert_array_equal(thin.rotations, again.rotations)
    np.testing.assert_array_equal(thin.rotations, scene.rotations[[0, 1, 2, 4, 5, 6, 7, 8, 9, 10]])


def test_min_opacity_then_max_splats_and_no_op() -> None:
    scene = random_scene(400)
    opaque = reduce_density(scene, Density(min_opacity=0.5))
    assert (opaque.opacities >= 0.5).all()
    assert len(opaque) == int((scene.opacities >= 0.5).sum())
    both = reduce_density(scene, Density(max_splats=20, min_opacity=0.5))
    assert len(both) == 20 and (both.opacities >= 0.5).all()
    assert reduce_density(scene, Density()) is scene
    assert reduce_density(scene, Density(max_splats=10**6)) is scene


@pytest.mark.parametrize(
    ("max_splats", "min_opacity", "message"),
    [
        (0, None, "between 1"),
        (2**31, None, "between 1"),
        (True, None, "whole number"),
        (1.5, None, "whole number"),
        (None, 1.0, "below 1"),
        (None, -0.1, "at least 0"),
        (None, float("nan"), "at least 0"),
        (None, "0.5", "a number"),
    ],
)
def test_limits_are_checked(max_splats, min_opacity, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Density.checked(max_splats, min_opacity)
