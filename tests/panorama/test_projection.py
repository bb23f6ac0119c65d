"""The orientation contract, equirectangular and cube-map sampling, panorama detection."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from mlsharp.errors import NotAPanorama
from mlsharp.imaging import load_image
from mlsharp.panorama import PanoramaLayout, cut_views, panorama_kind
from mlsharp.panorama.projection import (
    CUBE_FACES,
    CubeMap,
    Equirectangular,
    cross_problem,
    equirect_coordinates,
    equirect_directions,
)
from mlsharp.panorama.views import layout_views, view_rays
from tests.panorama.room import colors, encode, equirect_room, gpano_xmp


def smooth_panorama(width: int) -> np.ndarray:
    """A float panorama whose value is a smooth function of direction: ``(d + 1) * 100``."""
    return (equirect_directions(width, width // 2) + 1.0) * 100.0


def test_the_orientation_contract():
    width, height = 360, 180
    d = equirect_directions(width, height)
    row = height // 2  # the row just below the horizon; its centre is 0.5° down
    # Centre column on the horizon: forward (+z); a quarter turn right: +x.
    np.testing.assert_allclose(d[row, width // 2], [math.sin(math.radians(0.5)), 0, 1], atol=0.02)
    np.testing.assert_allclose(d[row, 3 * width // 4], [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(d[row, width // 4], [-1, 0, 0], atol=0.02)
    # The top row looks up (-y), the bottom row down (+y).
    assert d[0, :, 1].max() < -0.9999 and d[-1, :, 1].min() > 0.9999
    # The left and right edges meet behind (-z), at the ±180° seam.
    np.testing.assert_allclose(d[row, 0], [-math.sin(math.pi / width), 0, -1], atol=0.02)
    np.testing.assert_allclose(d[row, -1], [math.sin(math.pi / width), 0, -1], atol=0.02)
    # Pixel centres map back to themselves.
    u, v = equirect_coordinates(d, width, height)
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    np.testing.assert_allclose(u, columns, atol=1e-9)
    np.testing.assert_allclose(v, rows, atol=1e-9)


def test_sampling_wraps_across_the_seam():
    pixels = np.zeros((4, 8, 3))
    pixels[:, 0] = 100.0  # first column
    pixels[:, -1] = 20.0  # last column
    pano = Equirectangular(pixels)
    # Exactly on the seam (between the last and the first pixel centre): their average.
    seam = np.array([[0.0, 0.0, -1.0]])
    assert pano.sample(seam)[0, 0] == pytest.approx(60.0)
    # A quarter pixel to the right of the seam is 3/4 of the first column.
    lon = math.pi - 0.25 * 2 * math.pi / 8
    just_right = np.array([[math.sin(-lon), 0.0, math.cos(lon)]])
    assert pano.sample(just_right)[0, 0] == pytest.approx(0.75 * 100 + 0.25 * 20)


def test_a_view_across_the_seam_is_cut_exactly_as_one_that_is_not():
    width = 512
    values = smooth_panorama(width)
    pano = Equirectangular(values)
    rolled = Equirectangular(np.roll(values, width // 2, axis=1))  # the seam now in front
    views = {view.name: view for view in layout_views()}
    rays = view_rays(64, views["yaw 0"].reach)
    back = pano.sample(rays @ views["yaw 180"].rotation.T)
    front_of_rolled = rolled.sample(rays @ views["yaw 0"].rotation.T)
    np.testing.assert_allclose(back, front_of_rolled, atol=1e-6)
    # And both are the function itself, up to bilinear interpolation (no seam column).
    truth = (rays @ views["yaw 180"].rotation.T) / np.linalg.norm(rays, axis=-1, keepdims=True)
    error = np.abs(back - (truth + 1.0) * 100.0)
    assert error.max() < 0.05  # bilinear error of a smooth function at 0.7°/pixel


def face_images(side: int) -> dict[str, np.ndarray]:
    """The room's six cube faces, each rendered by its 90° camera."""
    rays = view_rays(side, 1.0)
    return {name: colors(rays @ rotation.T) for name, (_, rotation) in CUBE_FACES.items()}


def cross_of(faces: dict[str, np.ndarray], background: int = 0) -> np.ndarray:
    side = faces["front"].shape[0]
    cross = np.full((3 * side, 4 * side, 3), background, dtype=np.uint8)
    for name, ((row, col), _) in CUBE_FACES.items():
        cross[row * side : (row + 1) * side, col * side : (col + 1) * side] = faces[name]
    return cross


def test_cube_cross_faces_follow_the_contract():
    # Faces of a smooth function of direction, cut out of a cross and looked up again.
    rays = view_rays(64, 1.0)
    unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    faces = {name: (unit @ rotation.T + 1.0) * 100.0 for name, (_, rotation) in CUBE_FACES.items()}
    side = 64
    cross = np.zeros((3 * side, 4 * side, 3))
    for name, ((row, col), _) in CUBE_FACES.items():
        cross[row * side : (row + 1) * side, col * side : (col + 1) * side] = faces[name]
    cube = CubeMap.from_cross(cross)
    directions = equirect_directions(128, 64).reshape(-1, 3)
    error = np.abs(cube.sample(directions) - (directions + 1.0) * 100.0)
    assert error.max() < 1.5  # bilinear inside a face; edge pixels clamp (half a pixel)
    # The ring of faces matches the ring of views: the right face looks along +x.
    np.testing.assert_array_equal(CUBE_FACES["right"][1], layout_views()[1].rotation)
    assert cross_problem(cross_of(face_images(64))) is None


def test_a_cross_needs_blank_corners_and_some_content():
    rng = np.random.default_rng(0)
    assert "corner cells" in cross_problem(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    assert "flat" in cross_problem(np.full((96, 128, 3), 7, dtype=np.uint8))
    assert "whole faces" in cross_problem(np.zeros((90, 128, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gpano_xmp_marks_an_equirectangular_panorama(fmt):
    pixels = equirect_room(128)
    tagged = load_image(encode(pixels, fmt, xmp=gpano_xmp()), name="pano")
    assert tagged.projection == "equirectangular"
    assert panorama_kind(tagged, None) == "equirectangular"
    assert panorama_kind(tagged, False) is None  # --no-panorama
    plain = load_image(encode(pixels, fmt), name="plain")
    assert plain.projection is None
    assert panorama_kind(plain, None) is None
    assert panorama_kind(plain, True) == "equirectangular"


def test_panorama_shapes_and_their_errors():
    rng = np.random.default_rng(1)
    photo = load_image(encode(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)), name="p.png")
    with pytest.raises(NotAPanorama, match=r"p.png is 80x60 \(aspect 1.33:1\)"):
        panorama_kind(photo, True)
    assert panorama_kind(photo, None) is None  # an ordinary photo stays one
    wide = load_image(encode(np.zeros((50, 130, 3), np.uint8)), name="w.png")
    with pytest.raises(NotAPanorama, match=r"aspect 2.60:1"):
        panorama_kind(wide, True)
    cross = load_image(encode(cross_of(face_images(32))), name="cube.png")
    assert panorama_kind(cross, True) == "cubemap"
    assert panorama_kind(cross, None) is None  # a cube map is never guessed
    # A file that claims to be equirectangular but is cropped: a clear error, not a guess.
    cropped = load_image(encode(np.zeros((60, 80, 3), np.uint8), xmp=gpano_xmp()), name="c.png")
    with pytest.raises(NotAPanorama, match=r"GPano XMP.*--no-panorama"):
        panorama_kind(cropped, None)
    tiny = load_image(encode(np.zeros((8, 16, 3), np.uint8)), name="t.png")
    with pytest.raises(NotAPanorama, match="too small"):
        panorama_kind(tiny, True)


def test_sixteen_bit_panoramas_keep_their_depth():
    grey = (smooth_panorama(128)[..., 0] * 200).astype(np.uint16)  # up to 40,000
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    image = load_image(buffer.getvalue(), name="deep.png")
    assert image.pixels.dtype == np.uint16
    views = cut_views(image, "equirectangular", PanoramaLayout(), max_side=64)
    assert all(view.pixels.dtype == np.uint16 for view in views)
    assert max(int(view.pixels.max()) for view in views) > 255
