"""Pinhole cameras in the model's OpenCV frame (NumPy only).

A :class:`Camera` maps world points (the scene's camera space: +x right, +y down, +z
forward, the photo's camera at the origin) to pixels. Pixel ``(i, j)`` covers
``[i, i + 1) x [j, j + 1)``, so its centre is at ``(i + 0.5, j + 0.5)`` (gsplat's and
3DGS's convention). The principal point is the image centre ``(W / 2, H / 2)``, which is
where :mod:`mlsharp.unproject` put the photo's optical axis; the reference renderer's
``(W - 1) / 2`` is half a pixel off under this pixel convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians

#: Largest width or height accepted for a rendering.
MAX_SIDE = 8192


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: world-to-camera rotation and translation plus intrinsics.

    Attributes:
        rotation: (3, 3) world-to-camera rotation (rows: the camera's right, down and
            forward axes expressed in world coordinates).
        translation: (3,) world-to-camera translation (``x_cam = R x_world + t``).
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels.
        width, height: image size in pixels.
    """

    rotation: np.ndarray
    translation: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def position(self) -> np.ndarray:
        """The camera centre in world coordinates (``-R^T t``)."""
        return -self.rotation.T @ self.translation

    @property
    def viewmat(self) -> np.ndarray:
        """(4, 4) float32 world-to-camera matrix (OpenCV convention, as gsplat expects)."""
        matrix = np.eye(4, dtype=np.float32)
        matrix[:3, :3] = self.rotation
        matrix[:3, 3] = self.translation
        return matrix

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float32 intrinsic matrix ``K``."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float32
        )

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) of world points (N, 3) (no visibility test)."""
        cam = np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation
        u = self.fx * cam[:, 0] / cam[:, 2] + self.cx
        v = self.fy * cam[:, 1] / cam[:, 2] + self.cy
        return np.stack([u, v], axis=1)


def look_at(
    eye: np.ndarray,
    target: np.ndarray,
    up: np.ndarray = np.array([0.0, -1.0, 0.0]),  # noqa: B008 - read-only default
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(rotation, translation)`` of a camera at ``eye`` facing ``target``.

    ``up`` is the world's up direction; in the OpenCV frame that is ``-y``, so a camera at
    the origin looking at ``(0, 0, d)`` gets the identity rotation (the photo's camera).

    Raises:
        ValueError: ``eye`` equals ``target`` or the view direction is parallel to ``up``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm == 0:
        raise ValueError("camera eye and target coincide")
    forward /= norm
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("view direction is parallel to the up vector")
    right /= norm
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    return rotation, -rotation @ eye


def output_size(
    photo_size: tuple[int, int],
    width: int | None = None,
    height: int | None = None,
    *,
    max_side: int = 768,
    even: bool = False,
) -> tuple[int, int]:
    """The rendering size: explicit, or the photo's aspect ratio fitted into ``max_side``.

    With only one of ``width``/``height`` the other follows the photo's aspect ratio;
    with neither, the photo's size is scaled down (never up) so its longer side is at most
    ``max_side``. ``even`` rounds each side up to an even number (H.264 with yuv420p needs
    that).

    Raises:
        ConfigError: a side is below 1 or above :data:`MAX_SIDE`.
    """
    photo_w, photo_h = photo_size
    if width is None and height is None:
        scale = min(1.0, max_side / max(photo_w, photo_h))
        width, height = round(photo_w * scale), round(photo_h * scale)
    elif width is None:
        width = round(height * photo_w / photo_h)  # type: ignore[operator]
    elif height is None:
        height = round(width * photo_h / photo_w)
    width, height = max(1, int(width)), max(1, int(height))  # type: ignore[arg-type]
    # Checked before rounding to even sides, so the error names the size asked for (or
    # derived from the photo); MAX_SIDE is even, so rounding up cannot leave the range.
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= MAX_SIDE:
            raise ConfigError(f"render {name} {side} is outside 1..{MAX_SIDE}")
    if even:
        width, height = width + width % 2, height + height % 2
    return width, height


def photo_intrinsics(gaussians: Gaussians, size: tuple[int, int]) -> tuple[float, float, float]:
    """``(focal, cx, cy)`` in pixels of the photo's camera rendered at ``size``.

    Pixels stay square: the focal length scales by ``max(w / W, h / H)`` so the frame is
    filled; when the aspect ratio differs from the photo's, the longer axis is cropped.
    """
    width, height = size
    photo_w, photo_h = gaussians.image_size
    scale = max(width / photo_w, height / photo_h)
    return float(gaussians.focal_px) * scale, width / 2.0, height / 2.0


def camera_at(
    gaussians: Gaussians,
    size: tuple[int, int],
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
) -> Camera:
    """A camera with the photo's intrinsics at ``size`` and the given pose (default: the
    photo's own viewpoint)."""
    focal, cx, cy = photo_intrinsics(gaussians, size)
    return Camera(
        rotation=np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64),
        translation=np.zeros(3) if translation is None else np.asarray(translation, np.float64),
        fx=focal,
        fy=focal,
        cx=cx,
        cy=cy,
        width=int(size[0]),
        height=int(size[1]),
    )
