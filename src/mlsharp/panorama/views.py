"""Cutting a panorama into perspective views that SHARP can read (NumPy).

Layout (:class:`PanoramaLayout`, default: a ring of 4 views plus up and down, each a
square 100° pinhole view):

* ``ring`` views on the horizon at yaws ``0, 360/ring, ...`` degrees (0 = forward, +z;
  positive yaw turns right, towards +x), upright;
* one view straight up (-y), its image's bottom edge towards the front, and one straight
  down (+y), its top edge towards the front.

Every direction *belongs* to the view whose optical axis is nearest (see
:mod:`mlsharp.panorama.merge`); a view's field of view must cover the directions it owns
with a margin. In a view's normalised image coordinates (``x = X / Z``, ``y = Y / Z``) the
border with a pole view is the line ``|y| = 1`` and the border with a ring neighbour the
line ``|x| = tan(180° / ring)``; the view reaches ``tan(fov / 2)`` (1.19 for 100°). With
the default 4 + 2 views (a cube whose faces are widened from 90° to 100°) every border
lies 0.19 normalised units (5° at the middle of an edge, about 8 % of the view's side)
inside both views that meet there; neighbours overlap in a band about 10° wide, which is
where their depth scales are compared.

A view's focal length follows from its field of view: ``f = side / (2 tan(fov / 2))``
pixels, with the principal point at the image centre (as :mod:`mlsharp.unproject`
assumes). Its side matches the panorama's resolution at the view's centre
(``side = 2 f_pano tan(fov / 2)``, ``f_pano`` the source's pixels per radian), capped at
the network's internal resolution (more pixels would only be resized away).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlsharp.errors import ConfigError
from mlsharp.panorama.projection import PanoramaSource

#: Smallest view side in pixels.
MIN_VIEW_SIDE = 32
#: Smallest margin (normalised image units) between a view's edge and the directions it owns.
MIN_MARGIN = 0.05


@dataclass(frozen=True)
class PanoramaLayout:
    """Which perspective views a panorama is cut into.

    Attributes:
        ring: views around the horizon (3 to 12), evenly spaced from yaw 0 (forward).
        fov_degrees: field of view of every view (square images), 60 to 150 degrees.
    """

    ring: int = 4
    fov_degrees: float = 100.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.ring, bool)
            or not isinstance(self.ring, int)
            or not 3 <= self.ring <= 12
        ):
            raise ConfigError(f"panorama ring must be 3 to 12 views, got {self.ring!r}")
        if not 60.0 <= float(self.fov_degrees) <= 150.0:
            raise ConfigError(
                f"panorama view field of view must be 60 to 150 degrees, got {self.fov_degrees}"
            )
        reach = math.tan(math.radians(self.fov_degrees) / 2.0)
        needed = max(math.tan(math.pi / self.ring), 1.0, _pole_reach(self.ring))
        if reach < needed + MIN_MARGIN:
            smallest = 2.0 * math.degrees(math.atan(needed + MIN_MARGIN))
            raise ConfigError(
                f"a ring of {self.ring} views at {self.fov_degrees:g}° leaves too little overlap "
                f"between the views; use a field of view of at least {math.ceil(smallest)}°"
            )

    @property
    def count(self) -> int:
        """Number of views (the ring plus up and down)."""
        return self.ring + 2

    def describe(self) -> str:
        """One line, e.g. ``4 around the horizon + up + down, 100° each``."""
        return f"{self.ring} around the horizon + up + down, {self.fov_degrees:g}° each"


def _pole_reach(ring: int) -> float:
    """How far (normalised units) the directions a pole view owns reach along its image
    axes: the corners of the ring-sided polygon where the ring views' borders meet."""
    corner = 1.0 / math.cos(math.pi / ring)  # circumradius of the polygon of inradius 1
    yaws = (np.arange(ring) + 0.5) * (2.0 * math.pi / ring)
    return float(corner * np.max(np.maximum(np.abs(np.sin(yaws)), np.abs(np.cos(yaws)))))


#: The default layout: a ring of 4 plus up and down, 100° each (see the module docstring).
DEFAULT_LAYOUT = PanoramaLayout()


@dataclass(frozen=True, eq=False)
class ViewSpec:
    """One perspective view of the panorama.

    Attributes:
        name: ``yaw 90`` (ring views), ``up`` or ``down``.
        yaw_degrees, pitch_degrees: where its optical axis points (pitch +90 = up).
        fov_degrees: its (square) field of view.
        rotation: (3, 3) camera-to-world rotation; columns: the view's right, down and
            forward axes in the panorama's frame.
    """

    name: str
    yaw_degrees: float
    pitch_degrees: float
    fov_degrees: float
    rotation: np.ndarray

    @property
    def axis(self) -> np.ndarray:
        """The optical axis (unit forward vector) in the panorama's frame."""
        return self.rotation[:, 2]

    @property
    def reach(self) -> float:
        """``tan(fov / 2)``: the image's half-side in normalised units."""
        return math.tan(math.radians(self.fov_degrees) / 2.0)

    def focal_px(self, side: int) -> float:
        """Focal length in pixels of this view rendered ``side`` pixels wide."""
        return side / (2.0 * self.reach)


def view_rotation(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    """Camera-to-world rotation of a view turned ``yaw`` right and ``pitch`` up, with no roll
    (at the poles: the image's bottom edge towards yaw's direction when looking up)."""
    yaw, pitch = math.radians(yaw_degrees), math.radians(pitch_degrees)
    forward = np.array(
        [math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    )
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward], axis=1)
    rotation[np.abs(rotation) < 1e-15] = 0.0  # exact zeros for the axis-aligned views
    return rotation


def layout_views(layout: PanoramaLayout = DEFAULT_LAYOUT) -> list[ViewSpec]:
    """The views of ``layout``: the ring from yaw 0 turning right, then up, then down."""
    fov = float(layout.fov_degrees)
    views = []
    for index in range(layout.ring):
        yaw = index * 360.0 / layout.ring
        views.append(ViewSpec(f"yaw {yaw:g}", yaw, 0.0, fov, view_rotation(yaw, 0.0)))
    views.append(ViewSpec("up", 0.0, 90.0, fov, view_rotation(0.0, 90.0)))
    views.append(ViewSpec("down", 0.0, -90.0, fov, view_rotation(0.0, -90.0)))
    return views


def view_side(source: PanoramaSource, fov_degrees: float, max_side: int) -> int:
    """Pixels per side of a view: the source's resolution at the view's centre, capped."""
    reach = math.tan(math.radians(fov_degrees) / 2.0)
    side = round(2.0 * source.pixels_per_radian * reach)
    return int(min(max(side, MIN_VIEW_SIDE), max(max_side, MIN_VIEW_SIDE)))


def view_rays(side: int, reach: float) -> np.ndarray:
    """Camera-space rays (side, side, 3) ``(x, y, 1)`` through the pixel centres of a square
    view whose half-side is ``reach`` normalised units (principal point at the centre)."""
    focal = side / (2.0 * reach)
    centres = (np.arange(side) + 0.5 - side / 2.0) / focal
    x, y = np.meshgrid(centres, centres, indexing="xy")
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def cut_view(source: PanoramaSource, view: ViewSpec, side: int, dtype: np.dtype) -> np.ndarray:
    """The view's image (side, side, 3) in ``dtype`` (uint8 or uint16), bilinear from
    ``source``."""
    rays = view_rays(side, view.reach)
    directions = rays @ view.rotation.T  # camera -> world, as row vectors
    colors = source.sample(directions)
    top = float(np.iinfo(dtype).max)
    return np.ascontiguousarray(np.clip(np.rint(colors), 0.0, top).astype(dtype))
