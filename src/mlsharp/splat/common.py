"""Pieces the viewer formats share: coordinate frames, colour encodings, errors, defaults.

Every reader in :mod:`mlsharp.splat` returns :class:`~mlsharp.gaussians.Gaussians` in the
model's frame (OpenCV: +x right, +y down, +z forward, camera at the origin) with linear-RGB
colours, whatever frame and colour encoding the file uses.

Frames:

``opencv``
    The model's frame and the usual 3DGS/COLMAP ``.ply`` convention (Niantic calls it RDF:
    right, down, front).
``opengl``
    y up, camera looking down -z (three.js, OpenGL; Niantic's RUB: right, up, back).

The change between the two is a rotation by 180 degrees about the x axis, ``diag(1, -1, -1)``:
positions ``(x, y, z) -> (x, -y, -z)`` and rotation quaternions ``(w, x, y, z) -> (w, x, -y, -z)``
(conjugation by the unit quaternion ``(0, 1, 0, 0)``). It is its own inverse, and as a proper
rotation it keeps handedness: nothing is mirrored.
"""

from __future__ import annotations

import numpy as np

from mlsharp.choices import FRAME_CHOICES, Frame
from mlsharp.errors import ConfigError, MlsharpError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.ply import DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE, linear_to_srgb, srgb_to_linear

__all__ = [
    "DEFAULT_FOCAL_PX",
    "DEFAULT_IMAGE_SIZE",
    "FRAMES",
    "MAX_READ_SPLATS",
    "Frame",
    "SceneFormatError",
    "change_frame",
    "check_frame",
    "check_read_count",
    "from_srgb",
    "normalized_quaternions",
    "srgb_colors",
]

#: Coordinate frames a viewer format can be written in (mlsharp.choices defines them).
FRAMES: tuple[str, ...] = FRAME_CHOICES

#: The most splats a reader of a compressed format (.spz, .sog) decodes: 28x what SHARP
#: predicts and beyond the largest published 3DGS captures. Those files can claim far more
#: splats than their bytes hold (a gzip, zstd or WebP stream of zeros expands by 1000x and
#: more), so the claim is checked before anything is decompressed or allocated for it.
MAX_READ_SPLATS = 1 << 25

# Files without camera metadata (.splat, .spz, third-party PLY) get the reference loader's
# defaults (DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE, imported above), so a converted file is
# still a valid reference .ply.


class SceneFormatError(MlsharpError, ValueError):
    """A file is not a readable scene in the format its name claims (truncated, corrupt)."""

    exit_code = 3
    http_status = 422
    code = "invalid_scene"


def check_read_count(count: int, source: object, what: str) -> int:
    """Return ``count`` if a reader may decode that many splats, else raise.

    Raises:
        SceneFormatError: ``count`` exceeds :data:`MAX_READ_SPLATS`.
    """
    if count > MAX_READ_SPLATS:
        raise SceneFormatError(
            f"{source}: {what} claims {count:,} splats, more than mlsharp reads "
            f"({MAX_READ_SPLATS:,})"
        )
    return count


def check_frame(frame: str) -> Frame:
    """Return ``frame`` if it names a known frame; raise :class:`ConfigError` otherwise."""
    if frame not in FRAMES:
        raise ConfigError(f"unknown coordinate frame {frame!r} (choose from: {', '.join(FRAMES)})")
    return frame  # type: ignore[return-value]


def change_frame(
    positions: np.ndarray, rotations: np.ndarray, source: Frame, target: Frame
) -> tuple[np.ndarray, np.ndarray]:
    """Express positions (N, 3) and quaternions (N, 4, w first) of ``source`` in ``target``.

    Returns new float32 arrays (the inputs are never modified).
    """
    positions = np.array(positions, dtype=np.float32)
    rotations = np.array(rotations, dtype=np.float32)
    if check_frame(source) != check_frame(target):
        positions[:, 1:] *= -1  # (x, y, z) -> (x, -y, -z)
        rotations[:, 2:] *= -1  # (w, x, y, z) -> (w, x, -y, -z)
    return positions, rotations


def normalized_quaternions(rotations: np.ndarray) -> np.ndarray:
    """Unit quaternions (float32); a zero or non-finite quaternion becomes the identity."""
    q = np.asarray(rotations, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    good = np.isfinite(norm) & (norm > 0)
    out = np.where(good, q / np.where(good, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    return out.astype(np.float32)


def srgb_colors(gaussians: Gaussians) -> np.ndarray:
    """The Gaussians' colours as sRGB-encoded float32 (N, 3), what viewers display as is."""
    colors = np.asarray(gaussians.colors, dtype=np.float32)
    if gaussians.color_space == "linearRGB":
        return linear_to_srgb(colors)
    if gaussians.color_space == "sRGB":
        return colors
    raise ValueError(
        f"Gaussians.color_space must be 'linearRGB' or 'sRGB', got {gaussians.color_space!r}"
    )


def from_srgb(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded colours -> linear RGB (float32), the colour space readers return."""
    return srgb_to_linear(np.asarray(srgb, dtype=np.float32))
