"""``.splat`` (antimatter15's 32-byte records): byte layout, order, round trip, bad files.

Expected bytes follow the published layout (antimatter15/splat ``convert.py``, Spark's
``antisplat.ts``): 3 x f32 position, 3 x f32 linear scale, RGBA u8 (sRGB, opacity), and
quaternion (w, x, y, z) u8 as ``q * 128 + 128`` clipped to 0..255.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mlsharp import splat
from mlsharp.gaussians import Gaussians
from mlsharp.splat import SceneFormatError
from mlsharp.splat.antisplat import read_splat, write_splat
from mlsharp.splat.ply import linear_to_srgb
from tests.test_formats import random_scene


def small_scene() -> Gaussians:
    c = float(np.sqrt(0.5))
    return Gaussians(
        positions=np.array([[0.5, -1.0, 2.0], [3.0, 4.0, 5.0]], np.float32),
        # Importance = product of scales * opacity: the second splat is bigger.
        scales=np.array([[0.1, 0.1, 0.1], [1.0, 0.5, 0.25]], np.float32),
        rotations=np.array([[1, 0, 0, 0], [c, 0, c, 0]], np.float32),
        colors=np.array([[0.2, 0.6, 1.0], [0.0, 0.5, 0.8]], np.float32),
        opacities=np.array([0.92, 0.32], np.float32),
        focal_px=100.0,
        image_size=(8, 6),
        color_space="sRGB",
    )


def test_records_follow_the_published_layout_sorted_by_importance(tmp_path) -> None:
    data = write_splat(small_scene(), tmp_path / "s.splat").read_bytes()
    assert len(data) == 2 * 32
    first = struct.unpack("<3f3f4B4B", data[:32])
    second = struct.unpack("<3f3f4B4B", data[32:])
    # 1.0*0.5*0.25*0.32 = 0.04 > 0.1**3*0.92 = 0.00092: the big splat comes first.
    assert first[:6] == (3.0, 4.0, 5.0, 1.0, 0.5, 0.25)
    assert first[6:10] == (0, 128, 204, 82)  # 0.5*255 = 127.5 -> 128; 0.32*255 = 81.6
    # (c, 0, c, 0) * 128 + 128 with c = sqrt(1/2): 218.51, 128, 218.51, 128.
    assert first[10:] == (219, 128, 219, 128)
    assert second[:3] == (0.5, -1.0, 2.0)
    assert second[3:6] == pytest.approx((0.1, 0.1, 0.1))
    assert second[6:10] == (51, 153, 255, 235)  # 0.2*255 = 51, 0.6*255 = 153, 0.92 -> 234.6
    assert second[10:] == (255, 128, 128, 128)  # w = 1 -> 256, clipped to 255


def test_round_trip_within_quantization(tmp_path) -> None:
    scene = random_scene(3000, seed=5)
    path = splat.write(scene, tmp_path / "s.splat", "splat")
    back = splat.read(path)
    assert len(back) == len(scene)
    # Records are reordered: match them back by position (exact float32 in the file).
    order = np.lexsort(scene.positions.T)
    back_order = np.lexsort(back.positions.T)
    np.testing.assert_array_equal(back.positions[back_order], scene.positions[order])
    np.testing.assert_array_equal(back.scales[back_order], scene.scales[order])
    np.testing.assert_allclose(
        linear_to_srgb(back.colors[back_order]),
        linear_to_srgb(scene.colors[order]),
        atol=0.5 / 255 + 1e-5,
    )
    np.testing.assert_allclose(
        back.opacities[back_order], scene.opacities[order], atol=0.5 / 255 + 1e-6
    )
    dots = np.abs(np.sum(back.rotations[back_order] * scene.rotations[order], axis=1))
    assert np.degrees(2 * np.arccos(np.clip(dots, 0, 1))).max() < 1.0
    # File order: the original splats' scale_x * scale_y * scale_z * opacity, descending.
    importance = np.prod(scene.scales.astype(np.float64), axis=1) * scene.opacities
    in_file_order = np.empty(len(scene))
    in_file_order[back_order] = importance[order]
    assert (np.diff(in_file_order) <= 0).all()


def test_frame_option_flips_y_and_z(tmp_path) -> None:
    scene = random_scene(20)
    path = splat.write(scene, tmp_path / "gl.splat", "splat", frame="opengl")
    raw = read_splat(path, frame="opencv")  # read without converting back
    assert (raw.positions[:, 2] < 0).all()
    back = splat.read(path, frame="opengl")
    np.testing.assert_array_equal(np.sort(back.positions[:, 2]), np.sort(scene.positions[:, 2]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(33), "not a multiple of 32"),
        (struct.pack("<3f3f4B4B", float("nan"), 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), "finite"),
    ],
)
def test_bad_files_raise_scene_format_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.splat"
    path.write_bytes(content)
    with pytest.raises(SceneFormatError, match=message):
        splat.read(path)


def test_empty_scene_is_an_empty_file(tmp_path) -> None:
    scene = random_scene(0)
    path = splat.write(scene, tmp_path / "e.splat", "splat")
    assert path.read_bytes() == b""
    assert len(splat.read(path)) == 0
