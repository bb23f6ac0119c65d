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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.render.camera import Camera, camera_at, look_at

TrajectoryKind = Literal["orbit", "swing", "dolly", "spiral"]
TRAJECTORIES: tuple[str, ...] = get_args(TrajectoryKind)


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
    """

    max_disparity: float = 0.08
    max_zoom: float = 0.15
    near_quantile: float = 0.001
    focus_quantile: float = 0.1
    min_focus: float = 2.0


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


def eye_offsets(kind: TrajectoryKind, phases: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Eye positions (N, 3) of path ``kind`` at ``phases`` (fractions of one loop).

    Raises:
        ConfigError: ``kind`` is not one of :data:`TRAJECTORIES`.
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
        raise ConfigError(f"unknown trajectory {kind!r} (choose from: {', '.join(TRAJECTORIES)})")
    return np.stack(xyz, axis=-1)


def make_trajectory(
    gaussians: Gaussians,
    kind: TrajectoryKind,
    frames: int,
    size: tuple[int, int],
    params: TrajectoryParams = TrajectoryParams(),
) -> list[Camera]:
    """``frames`` cameras along path ``kind``, all looking at the scene's focus point.

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
    depths = scene_depths(gaussians, params)
    eyes = eye_offsets(kind, np.arange(frames) / frames, max_offsets(gaussians, params, depths))
    target = np.array([0.0, 0.0, depths.focus])
    return [camera_at(gaussians, size, *look_at(eye, target)) for eye in eyes]
