"""Camera paths and cameras: closed loops, look-at, depth scaling, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.render.camera import camera_at, look_at, output_size, photo_intrinsics
from mlsharp.render.trajectory import (
    PHOTO_TRAJECTORIES,
    TRAJECTORIES,
    eye_offsets,
    free_distance,
    make_trajectory,
    max_offsets,
    scene_depths,
)


def depth_scene(z_values, *, focal=800.0, size=(1024, 768)) -> Gaussians:
    z = np.asarray(z_values, np.float32)
    n = len(z)
    positions = np.stack([np.zeros(n), np.zeros(n), z], -1).astype(np.float32)
    return Gaussians(
        positions=positions,
        scales=np.full((n, 3), 0.01, np.float32),
        rotations=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        colors=np.full((n, 3), 0.5, np.float32),
        opacities=np.full(n, 0.9, np.float32),
        focal_px=focal,
        image_size=size,
    )


@pytest.mark.parametrize("kind", PHOTO_TRAJECTORIES)
def test_every_path_is_a_closed_loop(kind):
    amplitude = np.array([0.3, 0.2, 0.5])
    start, end = eye_offsets(kind, np.array([0.0, 1.0]), amplitude)
    np.testing.assert_allclose(start, end, atol=1e-12)
    # ... that actually moves, within its amplitude.
    path = eye_offsets(kind, np.linspace(0, 1, 101), amplitude)
    assert np.ptp(path, axis=0).max() > 0.1
    assert (np.abs(path) <= amplitude + 1e-12).all()


def test_orbit_returns_to_its_first_camera_after_the_last_frame():
    g = depth_scene(np.linspace(1.0, 10.0, 1000))
    frames = 24
    cams = make_trajectory(g, "orbit", frames, (320, 240))
    positions = np.array([c.position for c in cams])
    steps = np.linalg.norm(np.diff(np.vstack([positions, positions[:1]]), axis=0), axis=1)
    # Evenly spaced around a closed circle: the step from the last frame back to the
    # first is the same as every other step (no duplicated or missing frame).
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
    assert steps[0] > 0


@pytest.mark.parametrize("kind", PHOTO_TRAJECTORIES)
def test_every_camera_looks_at_the_focus_point_and_stays_upright(kind):
    g = depth_scene(np.linspace(1.0, 10.0, 1000))
    focus = scene_depths(g).focus
    for cam in make_trajectory(g, kind, 7, (320, 240)):
        u, v = cam.project(np.array([[0.0, 0.0, focus]]))[0]
        assert u == pytest.approx(160.0, abs=1e-6) and v == pytest.approx(120.0, abs=1e-6)
        np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.rotation) == pytest.approx(1.0)
        # The camera's "down" axis keeps pointing down the world's +y (no roll, no flip).
        assert cam.rotation[1, 1] > 0.99 and cam.rotation[0, 1] == pytest.approx(0.0, abs=1e-12)


def test_amplitudes_follow_the_reference_formulas_and_scale_with_depth():
    z = np.linspace(2.0, 20.0, 10_000)
    g = depth_scene(z, focal=800.0, size=(1024, 768))
    near = np.quantile(z, 0.001)
    diagonal = math.hypot(1024 / 800, 768 / 800)
    np.testing.assert_allclose(
        max_offsets(g), [0.08 * diagonal * near, 0.08 * diagonal * near, 0.15 * near], rtol=1e-6
    )
    assert scene_depths(g).focus == pytest.approx(np.quantile(z, 0.1), rel=1e-6)
    # Twice as far away: the camera moves twice as much.
    np.testing.assert_allclose(max_offsets(depth_scene(2 * z)), 2 * max_offsets(g), rtol=1e-6)
    # Near scenes focus no closer than 2 units (the reference's minimum).
    assert scene_depths(depth_scene(z / 10)).focus == 2.0


def test_one_frame_is_the_photo_viewpoint():
    g = depth_scene(np.linspace(1.0, 10.0, 100))
    for kind in TRAJECTORIES:
        (cam,) = make_trajectory(g, kind, 1, (512, 384))
        np.testing.assert_array_equal(cam.rotation, np.eye(3))
        np.testing.assert_array_equal(cam.translation, np.zeros(3))


def test_intrinsics_scale_the_photo_focal_to_the_output_size():
    g = depth_scene([5.0], focal=800.0, size=(1024, 768))
    cam = camera_at(g, (512, 384))
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (400.0, 400.0, 256.0, 192.0)
    # Another aspect ratio keeps square pixels and fills the frame (crops the long axis).
    assert photo_intrinsics(g, (384, 384)) == (400.0, 192.0, 192.0)


def test_look_at_from_the_origin_along_z_is_the_identity():
    rotation, translation = look_at(np.zeros(3), np.array([0.0, 0.0, 3.0]))
    np.testing.assert_allclose(rotation, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(translation, np.zeros(3), atol=1e-12)
    with pytest.raises(ValueError):
        look_at(np.zeros(3), np.zeros(3))


def test_output_size():
    assert output_size((4032, 3024)) == (768, 576)
    assert output_size((640, 480)) == (640, 480)  # never upscaled
    assert output_size((4032, 3024), width=400) == (400, 300)
    assert output_size((4032, 3024), height=301, even=True) == (402, 302)
    assert output_size((100, 100), 33, 17, even=True) == (34, 18)
    with pytest.raises(ConfigError):
        output_size((100, 100), 20000, 10)


def test_bad_trajectory_arguments_are_config_errors():
    g = depth_scene([5.0])
    with pytest.raises(ConfigError, match="at least 1"):
        make_trajectory(g, "orbit", 0, (64, 64))
    with pytest.raises(ConfigError, match="unknown trajectory"):
        make_trajectory(g, "zoom", 10, (64, 64))  # type: ignore[arg-type]


def test_turn_spins_in_place_from_forward_to_the_right():
    g = depth_scene(np.linspace(1.0, 10.0, 100))
    cams = make_trajectory(g, "turn", 8, (320, 240))
    forward = np.array([cam.rotation[2] for cam in cams])
    for cam in cams:
        np.testing.assert_allclose(cam.position, 0.0, atol=1e-12)  # in place
        assert cam.rotation[1, 1] == pytest.approx(1.0)  # upright, level
    yaws = np.degrees(np.arctan2(forward[:, 0], forward[:, 2])) % 360
    np.testing.assert_allclose(yaws, np.arange(8) * 45.0, atol=1e-9)  # +z, then right (+x)
    np.testing.assert_allclose(forward[2], [1, 0, 0], atol=1e-12)


def test_walk_goes_forward_and_back_short_of_what_is_ahead():
    # Splats ahead (within 30° of +z) at 4..8 m, others at 1 m beside the path.
    ahead = np.stack([np.zeros(500), np.zeros(500), np.linspace(4, 8, 500)], -1)
    beside = np.tile([1.0, 0.0, 0.0], (500, 1))
    g = depth_scene(np.zeros(1000))
    g.positions = np.vstack([ahead, beside]).astype(np.float32)
    free = free_distance(g)
    assert free == pytest.approx(np.quantile(np.linspace(4, 8, 500), 0.1), rel=1e-6)
    frames = 12
    cams = make_trajectory(g, "walk", frames, (320, 240))
    eyes = np.array([cam.position for cam in cams])
    np.testing.assert_allclose(eyes[:, :2], 0.0, atol=1e-12)
    assert eyes[0, 2] == 0.0 and eyes[:, 2].max() == pytest.approx(0.3 * free)
    np.testing.assert_allclose(eyes[1:, 2], eyes[:0:-1, 2], atol=1e-12)  # back the same way
    forward = np.array([cam.rotation[2] for cam in cams])
    glance = np.degrees(np.arctan2(forward[:, 0], forward[:, 2]))
    assert np.abs(glance).max() == pytest.approx(20.0, abs=1.0) and forward[:, 2].min() > 0.9


def test_a_panorama_scene_turns_by_default():
    from mlsharp.commands.render import default_trajectory

    g = depth_scene([1.0, 2.0])
    assert default_trajectory(g) == "orbit"
    g.metadata["panorama"] = True
    assert default_trajectory(g) == "turn"
