"""A known scene for the panorama tests: a textured box room, rendered with NumPy.

The camera sits at the origin of a box with walls at ``x = ±HALF[0]``, ``y = ±HALF[1]``,
``z = ±HALF[2]`` (OpenCV frame: +x right, +y down, +z forward). Each wall has its own
colour, so a splat's colour tells which wall it came from, and a checkerboard of 0.5 m
squares, so the network has texture to look at.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from mlsharp.gaussians import Gaussians
from mlsharp.panorama.projection import equirect_directions
from mlsharp.panorama.views import ViewSpec, view_rays

#: Half-sizes of the room in metres (x: 4 m wide, y: 3 m high, z: 5 m deep).
HALF = np.array([2.0, 1.5, 2.5])
#: Wall colours (sRGB 0..255), keyed by the axis direction the wall lies in.
WALLS = {
    "front": ((2, +1), (220, 40, 40)),  # +z: red
    "back": ((2, -1), (40, 200, 200)),  # -z: cyan
    "right": ((0, +1), (40, 190, 40)),  # +x: green
    "left": ((0, -1), (200, 40, 200)),  # -x: magenta
    "floor": ((1, +1), (210, 200, 40)),  # +y (down): yellow
    "ceiling": ((1, -1), (40, 60, 220)),  # -y (up): blue
}


def hit(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each (..., 3) direction to the wall it hits, and the wall's index
    (into ``WALLS``)."""
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        t_axis = HALF / np.abs(d)  # distance to the plane each axis is heading for
    axis = np.argmin(t_axis, axis=-1)
    distance = np.take_along_axis(t_axis, axis[..., None], axis=-1)[..., 0]
    sign = np.sign(np.take_along_axis(d, axis[..., None], axis=-1)[..., 0])
    keys = [(a, s) for (a, s), _ in WALLS.values()]
    wall = np.zeros(axis.shape, dtype=np.int64)
    for index, (a, s) in enumerate(keys):
        wall[(axis == a) & (sign == s)] = index
    return distance, wall


def colors(directions: np.ndarray) -> np.ndarray:
    """sRGB colours (..., 3) uint8 seen along ``directions``: wall colour, checkered."""
    distance, wall = hit(directions)
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    point = d * distance[..., None]
    checker = (np.floor(point / 0.5).astype(np.int64).sum(axis=-1) % 2) == 0
    palette = np.array([rgb for _, rgb in WALLS.values()], dtype=np.float64)
    shade = np.where(checker, 1.0, 0.7)[..., None]
    return np.clip(palette[wall] * shade, 0, 255).astype(np.uint8)


def equirect_room(width: int) -> np.ndarray:
    """The room as a ``width x width/2`` equirectangular panorama (uint8 RGB)."""
    return colors(equirect_directions(width, width // 2))


def encode(pixels: np.ndarray, fmt: str = "PNG", xmp: bytes | None = None) -> bytes:
    """The pixels as an image file (optionally with an XMP packet)."""
    buffer = io.BytesIO()
    options: dict = {}
    if xmp is not None and fmt == "PNG":  # PNG keeps XMP in an iTXt chunk
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
        options["pnginfo"] = info
    elif xmp is not None:
        options["xmp"] = xmp
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gpano_xmp(projection: str = "equirectangular") -> bytes:
    """An XMP packet with the GPano projection type, as cameras write it."""
    return (
        b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:GPano="http://ns.google.com/photos/1.0/panorama/"'
        b' GPano:ProjectionType="' + projection.encode() + b'" GPano:UsePanoramaViewer="True"/>'
        b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def ideal_view(view: ViewSpec, side: int, scale: float = 1.0) -> Gaussians:
    """What a perfect predictor would return for the room seen by ``view``: one splat per
    pixel on the wall, at ``scale`` times the true distance (SHARP's per-view scale error),
    in the view's camera frame, with the depth map to match."""
    rays = view_rays(side, view.reach).reshape(-1, 3)
    world = rays @ view.rotation.T
    distance, _ = hit(world)
    positions = rays / np.linalg.norm(rays, axis=1, keepdims=True) * (distance * scale)[:, None]
    count = len(positions)
    return Gaussians(
        positions=positions.astype(np.float32),
        scales=np.full((count, 3), 0.01 * scale, dtype=np.float32),
        rotations=np.tile(np.array([1, 0, 0, 0], dtype=np.float32), (count, 1)),
        colors=colors(world).astype(np.float32) / 255.0,
        opacities=np.full(count, 0.9, dtype=np.float32),
        focal_px=view.focal_px(side),
        image_size=(side, side),
        depth=positions[:, 2].reshape(side, side).astype(np.float32),
    )
