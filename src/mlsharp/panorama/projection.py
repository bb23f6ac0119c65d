"""Panorama images as functions of direction: the orientation contract and sampling (NumPy).

Orientation contract (the model's OpenCV frame, camera at the origin: +x right, +y down,
+z forward). For an equirectangular image of ``W x H`` pixels, pixel column ``u`` covers
longitudes ``[u, u + 1) * 2π / W - π`` and row ``v`` latitudes
``π/2 - [v, v + 1) * π / H``, so

* the centre column on the horizon looks along **+z** (forward),
* a quarter turn to the right (column ``3 W / 4``) along **+x**,
* the top row looks **up**, which is **-y**,
* the left and right edges meet at the ±180° seam, **behind** (-z).

A direction ``d = (x, y, z)`` has longitude ``atan2(x, z)`` and latitude ``asin(-y)``.

Sampling is bilinear between pixel centres. Columns wrap around (column ``W - 1`` is the
left neighbour of column 0), so a view that straddles the seam is cut exactly as one that
does not; rows are clamped at the poles.

A six-face cube map is read from a 4:3 horizontal cross (cells of ``s x s`` pixels)::

          [ up  ]
    [left][front][right][back]
          [down ]

Each face is what a 90° pinhole camera at the origin sees looking at it, upright: the side
faces turn right from ``front`` (+z) through ``right`` (+x) and ``back`` (-z) to ``left``
(-x); ``up`` (-y) has its bottom edge against ``front``'s top edge, ``down`` (+y) its top
edge against ``front``'s bottom edge. The six empty cells must be one flat colour (that is
how a cross is told from an ordinary 4:3 photo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Width / height of an equirectangular panorama (360° x 180°).
EQUIRECT_ASPECT = 2.0
#: Width / height of a horizontal-cross cube map (4 x 3 faces).
CROSS_ASPECT = 4.0 / 3.0
#: Relative deviation from an aspect ratio still accepted (stitchers round sizes).
ASPECT_TOLERANCE = 0.01
#: Smallest panorama height (equirectangular) or cube face side, in pixels.
MIN_PANORAMA_SIDE = 32
#: Largest spread (levels of 255) of the colours inside an empty cell of a cube cross.
CROSS_EMPTY_SPREAD = 12.0

#: Camera-to-world rotations (columns: the camera's right, down and forward axes) of the
#: six cube faces, in the cross's cell order: (row, column) of each face.
CUBE_FACES: dict[str, tuple[tuple[int, int], np.ndarray]] = {
    "front": ((1, 1), np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)),
    "right": ((1, 2), np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=np.float64)),
    "back": ((1, 3), np.array([[-1, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=np.float64)),
    "left": ((1, 0), np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=np.float64)),
    "up": ((0, 1), np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)),
    "down": ((2, 1), np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)),
}
_EMPTY_CELLS = ((0, 0), (0, 2), (0, 3), (2, 0), (2, 2), (2, 3))
_CROSS_CELLS = tuple(cell for cell, _ in CUBE_FACES.values())


class PanoramaSource(Protocol):
    """A full-sphere image that can be looked up by direction."""

    @property
    def pixels_per_radian(self) -> float:
        """Angular resolution: source pixels per radian where it is finest."""
        ...

    def sample(self, directions: np.ndarray) -> np.ndarray:
        """Bilinear colours (..., 3) float32 of the (..., 3) directions (any length)."""
        ...


def longitude_latitude(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude in (-π, π] (0 forward, +π/2 right) and latitude (+π/2 up) of directions."""
    d = np.asarray(directions, dtype=np.float64)
    norm = np.linalg.norm(d, axis=-1)
    longitude = np.arctan2(d[..., 0], d[..., 2])
    latitude = np.arcsin(np.clip(-d[..., 1] / np.where(norm > 0, norm, 1.0), -1.0, 1.0))
    return longitude, latitude


def directions_from_lonlat(longitude: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Unit directions (..., 3) of longitudes and latitudes (radians)."""
    cos_lat = np.cos(latitude)
    return np.stack(
        [np.sin(longitude) * cos_lat, -np.sin(latitude), np.cos(longitude) * cos_lat], axis=-1
    )


def equirect_directions(width: int, height: int) -> np.ndarray:
    """Unit directions (height, width, 3) of the pixel centres of an equirectangular image."""
    longitude = (np.arange(width) + 0.5) * (2.0 * math.pi / width) - math.pi
    latitude = math.pi / 2.0 - (np.arange(height) + 0.5) * (math.pi / height)
    lon, lat = np.meshgrid(longitude, latitude, indexing="xy")
    return directions_from_lonlat(lon, lat)


def equirect_coordinates(
    directions: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous pixel coordinates ``(u, v)`` of directions in a ``width x height``
    equirectangular image (pixel centres at integer + 0.5 - 0.5, i.e. pixel ``i``'s centre
    is at ``u = i``)."""
    longitude, latitude = longitude_latitude(directions)
    u = (longitude + math.pi) * (width / (2.0 * math.pi)) - 0.5
    v = (math.pi / 2.0 - latitude) * (height / math.pi) - 0.5
    return u, v


def bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray, *, wrap_columns: bool) -> np.ndarray:
    """Bilinear lookup of ``image`` (H, W, C) at continuous pixel-centre coordinates.

    Columns wrap around when ``wrap_columns`` (the ±180° seam), else clamp; rows clamp.
    Returns (..., C) float32.
    """
    height, width = image.shape[:2]
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)[..., None]
    fv = (v - v0).astype(np.float32)[..., None]
    u0 = u0.astype(np.int64)
    v0 = v0.astype(np.int64)
    if wrap_columns:
        c0, c1 = np.mod(u0, width), np.mod(u0 + 1, width)
    else:
        c0, c1 = np.clip(u0, 0, width - 1), np.clip(u0 + 1, 0, width - 1)
    r0, r1 = np.clip(v0, 0, height - 1), np.clip(v0 + 1, 0, height - 1)
    top = image[r0, c0].astype(np.float32) * (1 - fu) + image[r0, c1].astype(np.float32) * fu
    bottom = image[r1, c0].astype(np.float32) * (1 - fu) + image[r1, c1].astype(np.float32) * fu
    return top * (1 - fv) + bottom * fv


@dataclass(frozen=True, eq=False)
class Equirectangular:
    """An equirectangular panorama (H x W x 3 pixels, any dtype)."""

    pixels: np.ndarray

    @property
    def pixels_per_radian(self) -> float:
        """Columns per radian of longitude (the resolution on the horizon)."""
        return self.pixels.shape[1] / (2.0 * math.pi)

    def sample(self, directions: np.ndarray) -> np.ndarray:
        """Bilinear colours of ``directions``, wrapping across the ±180° seam."""
        height, width = self.pixels.shape[:2]
        u, v = equirect_coordinates(directions, width, height)
        return bilinear(self.pixels, u, v, wrap_columns=True)


@dataclass(frozen=True, eq=False)
class CubeMap:
    """Six square faces (see :data:`CUBE_FACES`), each ``side x side x 3``."""

    faces: dict[str, np.ndarray]

    @classmethod
    def from_cross(cls, pixels: np.ndarray) -> CubeMap:
        """Cut the faces out of a 4:3 horizontal cross (checked by :func:`cross_problem`)."""
        side = pixels.shape[1] // 4
        faces = {
            name: pixels[row * side : (row + 1) * side, col * side : (col + 1) * side]
            for name, ((row, col), _) in CUBE_FACES.items()
        }
        return cls(faces)

    @property
    def side(self) -> int:
        """Pixels per face side."""
        return int(self.faces["front"].shape[0])

    @property
    def pixels_per_radian(self) -> float:
        """The faces' focal length in pixels (resolution at a face's centre)."""
        return self.side / 2.0

    def sample(self, directions: np.ndarray) -> np.ndarray:
        """Bilinear colours of ``directions`` from the face each points at (edges clamp)."""
        d = np.asarray(directions, dtype=np.float64)
        out = np.zeros((*d.shape[:-1], 3), dtype=np.float32)
        best = np.full(d.shape[:-1], -np.inf)
        owner = np.zeros(d.shape[:-1], dtype=np.int64)
        names = list(CUBE_FACES)
        for index, name in enumerate(names):
            forward = CUBE_FACES[name][1][:, 2]
            dot = d @ forward
            better = dot > best
            best = np.where(better, dot, best)
            owner = np.where(better, index, owner)
        focal = self.side / 2.0
        for index, name in enumerate(names):
            mask = owner == index
            if not mask.any():
                continue
            cam = d[mask] @ CUBE_FACES[name][1]  # world -> camera: R^T d, as row vectors
            u = focal * cam[:, 0] / cam[:, 2] + self.side / 2.0 - 0.5
            v = focal * cam[:, 1] / cam[:, 2] + self.side / 2.0 - 0.5
            out[mask] = bilinear(self.faces[name], u, v, wrap_columns=False)
        return out


def aspect_matches(width: int, height: int, aspect: float) -> bool:
    """Whether ``width / height`` is ``aspect`` within :data:`ASPECT_TOLERANCE`."""
    return height > 0 and abs(width / height - aspect) <= ASPECT_TOLERANCE * aspect


def cross_problem(pixels: np.ndarray) -> str | None:
    """Why ``pixels`` is not a horizontal-cross cube map, or ``None`` if it is one."""
    height, width = pixels.shape[:2]
    if width % 4 or height % 3 or width // 4 != height // 3:
        return "its width and height are not 4 and 3 whole faces"
    side = width // 4
    if side < MIN_PANORAMA_SIDE:
        return f"its faces are smaller than {MIN_PANORAMA_SIDE} px"
    limit = CROSS_EMPTY_SPREAD * (65535.0 / 255.0 if pixels.dtype == np.uint16 else 1.0)
    if all(_spread(pixels, cell, side) <= limit for cell in _CROSS_CELLS):
        return "it is one flat colour"
    if any(_spread(pixels, cell, side) > limit for cell in _EMPTY_CELLS):
        return "its corner cells are not empty (a cube-map cross has six blank cells)"
    return None


def _spread(pixels: np.ndarray, cell: tuple[int, int], side: int) -> float:
    """Largest per-channel spread (1st to 99th percentile) inside a cell of the cross,
    away from its edges (compression rings along the faces' borders)."""
    row, col = cell
    inset = max(1, side // 8)
    values = pixels[
        row * side + inset : (row + 1) * side - inset,
        col * side + inset : (col + 1) * side - inset,
    ].reshape(-1, pixels.shape[2])
    low, high = np.percentile(values, [1, 99], axis=0)
    return float(np.max(high - low))
