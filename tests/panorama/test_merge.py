"""Merging views: scale reconciliation, one layer per direction, rotation into the
panorama's frame, on views of the known room as a perfect predictor would give them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlsharp import splat
from mlsharp.panorama.merge import (
    merge_views,
    multiply_quaternions,
    reconcile_scales,
    rotation_quaternion,
)
from mlsharp.panorama.views import layout_views
from mlsharp.unproject import quaternions_to_matrices
from tests.panorama.room import HALF, WALLS, hit, ideal_view
from tests.panorama.seams import seam_stats

SIDE = 192
#: SHARP-like disagreement between the views' metric scales (up to ~±35 %).
TRUE_SCALES = np.array([1.0, 1.3, 0.8, 1.1, 0.75, 1.25])


@pytest.fixture(scope="module")
def room_views():
    views = layout_views()
    return views, [ideal_view(v, SIDE, s) for v, s in zip(views, TRUE_SCALES, strict=True)]


@pytest.fixture(scope="module")
def merged(room_views):
    views, results = room_views
    scales, report = reconcile_scales(views, results)
    scene = merge_views(views, results, scales=scales, pixels_per_radian=SIDE / 2.4)
    return scales, report, scene


def test_scales_are_reconciled_from_the_overlaps(merged):
    scales, report, _ = merged
    corrected = scales * TRUE_SCALES
    # Every view now agrees on one scale (the views' geometric mean of the truth).
    np.testing.assert_allclose(corrected / corrected.mean(), 1.0, atol=1e-3)
    assert np.exp(np.log(scales).mean()) == pytest.approx(1.0)  # SHARP's overall scale kept
    # The residual at the seams: large before, nil after (the room is exact).
    assert report.samples > 500
    assert report.median_before > 0.1 and report.median < 1e-3 and report.p95 < 5e-3
    assert len(report.pairs) == 12  # a cube's edges


def test_merged_splats_lie_on_the_walls_in_the_right_directions(merged):
    scene = merged[2]
    k = math.exp(np.log(TRUE_SCALES).mean())  # the merged scene's unit
    distance = np.linalg.norm(scene.positions, axis=1)
    true_distance, wall = hit(scene.positions)
    np.testing.assert_allclose(distance, true_distance * k, rtol=2e-3)
    # Front is front, up is up, left is left: each axis direction sees its wall's colour.
    names = list(WALLS)
    unit = scene.positions / distance[:, None]
    for name, ((axis, sign), rgb) in WALLS.items():
        direction = np.zeros(3)
        direction[axis] = sign
        cone = unit @ direction > math.cos(math.radians(20))
        assert cone.sum() > 100
        assert (wall[cone] == names.index(name)).all()
        mean = scene.colors[cone].mean(axis=0)
        hue = np.dot(mean, rgb) / (np.linalg.norm(mean) * np.linalg.norm(rgb))
        assert hue > 0.99, (name, mean)
    # The room's far corners are where the walls say.
    assert np.abs(scene.positions).max(axis=0) == pytest.approx(HALF * k, rel=2e-3)


def test_seams_have_one_layer_and_no_gap(room_views, merged):
    views, _ = room_views
    stats = seam_stats(merged[2].positions, views, SIDE * SIDE, layers=1)
    assert stats.probes > 100
    assert stats.max_gap < 1.0  # no probe farther than one grid step from a splat
    assert stats.min_layers > 0.7 and stats.max_layers < 1.3  # one layer, not two


def test_every_view_keeps_only_its_own_cell(room_views, merged):
    views, results = room_views
    scene = merged[2]
    kept = scene.metadata["views_kept"]
    assert sum(kept.values()) == len(scene)
    # The cube's cells are alike: each view keeps the same share of its splats.
    assert len(set(kept.values())) == 1
    share = next(iter(kept.values())) / len(results[0])
    # The cell (|x|, |y| <= 1) is (1 / 1.19)^2 of the view's area.
    assert share == pytest.approx((1 / views[0].reach) ** 2, rel=0.02)


def matrices(quaternions: np.ndarray) -> np.ndarray:
    """Rotation matrices of (N, 4) quaternions, by the unprojection's own conversion."""
    return quaternions_to_matrices(torch.from_numpy(quaternions)).numpy()


def test_rotations_turn_with_their_view():
    views = layout_views()
    rng = np.random.default_rng(3)
    local = rng.normal(size=(50, 4))
    local /= np.linalg.norm(local, axis=1, keepdims=True)
    for view in views:
        turn = rotation_quaternion(view.rotation)
        np.testing.assert_allclose(matrices(turn[None])[0], view.rotation, atol=1e-12)
        world = multiply_quaternions(turn, local)
        np.testing.assert_allclose(matrices(world), view.rotation @ matrices(local), atol=1e-10)


def test_a_splat_keeps_its_shape_in_the_panorama_frame(room_views):
    views, results = room_views
    scene = merge_views(views, results, pixels_per_radian=80.0)  # no scale correction
    q = scene.rotations.astype(np.float64)
    assert (np.abs(np.linalg.norm(q, axis=1) - 1) < 1e-5).all()
    assert (q[:, 0] >= 0).all()  # canonical sign
    # The ideal splats are round: any rotation leaves their covariance s^2 I.
    assert np.allclose(scene.scales, scene.scales[:, :1])


def test_without_depth_maps_the_scales_stay_one(room_views):
    views, results = room_views
    bare = [type(r)(**{**r.__dict__, "depth": None}) for r in results]
    scales, report = reconcile_scales(views, bare)
    assert report is None and (scales == 1).all()
    assert merge_views(views, bare, pixels_per_radian=80.0).depth is None


def test_the_depth_map_is_equirectangular_distance(merged):
    _, _, scene = merged
    height, width = scene.depth.shape
    assert width == 2 * height
    from mlsharp.panorama.projection import equirect_directions

    truth, _ = hit(equirect_directions(width, height))
    k = math.exp(np.log(TRUE_SCALES).mean())
    np.testing.assert_allclose(scene.depth, truth * k, rtol=0.03)
    assert np.median(np.abs(scene.depth / (truth * k) - 1)) < 1e-3


def test_the_scene_carries_a_forward_camera(merged):
    scene = merged[2]
    width, height = scene.image_size
    assert width / height == pytest.approx(4 / 3, rel=0.01)
    assert 2 * math.degrees(math.atan(width / 2 / scene.focal_px)) == pytest.approx(90, abs=0.5)


def test_every_output_format_writes_the_merged_scene(merged, tmp_path):
    scene = merged[2]
    scene.metadata["panorama"] = {"projection": "equirectangular"}
    for fmt in splat.FORMATS:
        dest = tmp_path / f"room{splat.SUFFIXES[fmt]}"
        splat.write(scene, dest, fmt)
        assert dest.stat().st_size > 0, fmt
        if fmt in splat.DEPTH_FORMATS:
            continue
        back = splat.read(dest)
        assert len(back) == len(scene), fmt
        if fmt in ("ply", "ply-standard"):  # the files that carry comments say "panorama"
            assert back.metadata.get("panorama") is True
