"""Camera paths around the photo's viewpoint (NumPy only).

The facts follow Apple's ``sharp render`` (``sharp/utils/camera.py``):

* Motion is scaled by the scene's depth. ``near`` is the 0.1 % depth quantile of the
  splat centres in front of the camera; the sideways amplitude is
  ``0.08 * diagonal * near`` with ``diagonal = hypot(W / f, H / f)`` of the photo (a
  maximum disparity of 8 % of the image diagonal for the nearest content), the forward
  amplitude is ``0.15 * near``.
* Every camera looks at a fixed point on the optical axis, ``(0, 0, focus)`` with
  ``focus = max(2, 10 % depth quantile)``, with world up ``-y`` (OpenCV frame).
* The eye moves in the photo's camera space, starting from the origin plane.

Paths (``t`` runs over ``[0, 1)``; all are closed, so a video loops seamlessly and no
frame is repeated):

========  ==========================================================  ===============
name      eye position                                                reference
========  ==========================================================  ===============
orbit     ``(X sin 2πt, Y cos 2πt, 0)``: a circle in the photo plane   ``rotate``
swing     ``(X sin 2πt, 0, 0)``: side to side                          ``shake`` (x)
dolly     ``(0, 0, Z (1 - cos 2πt) / 2)``: forward and back            (z of ``rotate_forward``)
spiral    ``(X sin 4πt, Y cos 4πt, Z (1 - cos 2πt) / 2)``: two orbit   (ours)
          turns while moving forward and back
========  ==========================================================  ===============

Paths for 360° panoramas (the camera starts at the centre looking forward, +z):

========  ===========================================================================
turn      a full turn in place to the right: the eye stays at the origin, the view
          direction is ``(sin 2πt, 0, cos 2πt)``
walk      a short walk forward and back, ``(0, 0, W (1 - cos 2πt) / 2)``, looking ahead
          while glancing ``±20°`` to the sides (``yaw = 20° sin 2πt``); ``W`` is 30 % of
          the free distance ahead (the 10 % quantile of the distances of the splats
          within 30° of +z), so the walk stops well short of what is in front
========  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.render.camera import Camera, camera_at, look_at

PhotoTrajectory = Literal["orbit", "swing", "dolly", "spiral"]
PanoramaTrajectory = Literal["turn", "walk"]
TrajectoryKind = PhotoTrajectory | PanoramaTrajectory
#: The paths around a photo's viewpoint (:func:`eye_offsets`).
PHOTO_TRAJECTORIES: tuple[str, ...] = get_args(PhotoTrajectory)
#: The paths made for panoramas, from inside the scene (see the module docstring).
PANORAMA_TRAJECTORIES: tuple[str, ...] = get_args(PanoramaTrajectory)
TRAJECTORIES: tuple[str, ...] = PHOTO_TRAJECTORIES + PANORAMA_TRAJECTORIES


@dataclass(frozen=True)
class TrajectoryParams:
    """How far the camera moves, relative to the scene (the reference's defaults).

    Attributes:
        max_disparity: sideways amplitude as a fraction of the image diagonal at the
            nearest depth.
        max_zoom: forward amplitude as a fraction of the nearest depth.
        near_quantile: depth quantile taken as the nearest content.
        focus_quantile: depth quantile of the look-at point.
        min_focus: smallest look-at distance (scene units, metres for the model).
        walk_fraction: the ``walk`` path's length as a fraction of the free distance ahead.
        walk_cone_degrees: half-angle of the cone ahead whose splats bound that distance.
        walk_glance_degrees: how far the ``walk`` path looks to each side.
    """

    max_disparity: float = 0.08
    max_zoom: float = 0.15
    near_quantile: float = 0.001
    focus_quantile: float = 0.1
    min_focus: float = 2.0
    walk_fraction: float = 0.3
    walk_cone_degrees: float = 30.0
    walk_glance_degrees: float = 20.0


@dataclass(frozen=True)
class SceneDepths:
    """Depth statistics of a scene seen from the photo's camera."""

    near: float
    focus: float


def scene_depths(
    gaussians: Gaussians, params: TrajectoryParams = TrajectoryParams()
) -> SceneDepths:
    """Depth quantiles of the splat centres in front of the photo's camera.

    A scene with nothing in front of the camera gets ``near = focus = min_focus``.
    """
    z = np.asarray(gaussians.positions[:, 2], dtype=np.float64)
    z = z[np.isfinite(z) & (z > 0)]
    if z.size == 0:
        return SceneDepths(near=params.min_focus, focus=params.min_focus)
    near, focus = np.quantile(z, [params.near_quantile, params.focus_quantile])
    return SceneDepths(near=float(near), focus=max(params.min_focus, float(focus)))


def max_offsets(
    gaussians: Gaussians,
    params: TrajectoryParams = TrajectoryParams(),
    depths: SceneDepths | None = None,
) -> np.ndarray:
    """The path's amplitudes ``(X, Y, Z)`` in scene units, scaled by the scene's depth."""
    depths = depths or scene_depths(gaussians, params)
    width, height = gaussians.image_size
    focal = float(gaussians.focal_px)
    diagonal = math.hypot(width / focal, height / focal)
    lateral = params.max_disparity * diagonal * depths.near
    return np.array([lateral, lateral, params.max_zoom * depths.near])


def eye_offsets(kind: PhotoTrajectory, phases: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Eye positions (N, 3) of photo path ``kind`` at ``phases`` (fractions of one loop).

    Raises:
        ConfigError: ``kind`` is not one of :data:`PHOTO_TRAJECTORIES`.
    """
    t = 2.0 * np.pi * np.asarray(phases, dtype=np.float64)
    x_amp, y_amp, z_amp = (float(a) for a in amplitude)
    zero = np.zeros_like(t)
    if kind == "orbit":
        xyz = (x_amp * np.sin(t), y_amp * np.cos(t), zero)
    elif kind == "swing":
        xyz = (x_amp * np.sin(t), zero, zero)
    elif kind == "dolly":
        xyz = (zero, zero, z_amp * (1.0 - np.cos(t)) / 2.0)
    elif kind == "spiral":
        xyz = (x_amp * np.sin(2 * t), y_amp * np.cos(2 * t), z_amp * (1.0 - np.cos(t)) / 2.0)
    else:
        raise ConfigError(
            f"unknown trajectory {kind!r} (choose from: {', '.join(PHOTO_TRAJECTORIES)})"
        )
    return np.stack(xyz, axis=-1)


def make_trajectory(
    gaussians: Gaussians,
    kind: TrajectoryKind,
    frames: int,
    size: tuple[int, int],
    params: TrajectoryParams = TrajectoryParams(),
) -> list[Camera]:
    """``frames`` cameras along path ``kind``: the photo paths all look at the scene's focus
    point, the panorama paths look ahead from inside (see the module docstring).

    A single frame is the photo's own viewpoint (whatever ``kind``), so a one-frame
    rendering is a still of the photo.

    Raises:
        ConfigError: ``frames`` < 1 or ``kind`` is unknown.
    """
    if frames < 1:
        raise ConfigError(f"frames must be at least 1, got {frames}")
    if kind not in TRAJECTORIES:
        raise ConfigError(f"unknown trajectory {kind!r} (choose from: {', '.join(TRAJECTORIES)})")
    if frames == 1:
        return [camera_at(gaussians, size)]
    if kind in PANORAMA_TRAJECTORIES:
        return _inside_path(gaussians, kind, np.arange(frames) / frames, size, params)
    depths = scene_depths(gaussians, params)
    amplitude = max_offsets(gaussians, params, depths)
    eyes = eye_offsets(kind, np.arange(frames) / frames, amplitude)  # type: ignore[arg-type]
    target = np.array([0.0, 0.0, depths.focus])
    return [camera_at(gaussians, size, *look_at(eye, target)) for eye in eyes]


def free_distance(gaussians: Gaussians, params: TrajectoryParams = TrajectoryParams()) -> float:
    """How far ahead (+z) the scene is open: the ``focus_quantile`` of the distances of the
    splat centres within ``walk_cone_degrees`` of +z (``min_focus`` when there are none)."""
    positions = np.asarray(gaussians.positions, dtype=np.float64)
    distance = np.linalg.norm(positions, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ahead = positions[:, 2] / distance >= math.cos(math.radians(params.walk_cone_degrees))
    distance = distance[ahead & np.isfinite(distance)]
    if distance.size == 0:
        return params.min_focus
    return float(np.quantile(distance, params.focus_quantile))


def _inside_path(
    gaussians: Gaussians,
    kind: str,
    phases: np.ndarray,
    size: tuple[int, int],
    params: TrajectoryParams,
) -> list[Camera]:
    """The ``turn`` and ``walk`` cameras (see the module docstring)."""
    t = 2.0 * np.pi * phases
    eyes = np.zeros((len(t), 3))
    if kind == "turn":
        yaws = t
    else:
        yaws = np.radians(params.walk_glance_degrees) * np.sin(t)
        length = params.walk_fraction * free_distance(gaussians, params)
        eyes[:, 2] = length * (1.0 - np.cos(t)) / 2.0
    cameras = []
    for eye, yaw in zip(eyes, yaws, strict=True):
        ahead = eye + np.array([math.sin(yaw), 0.0, math.cos(yaw)])
        cameras.append(camera_at(gaussians, size, *look_at(eye, ahead)))
    return cameras
