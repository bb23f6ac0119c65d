"""Depth exports: 16-bit PNG with its scale in text chunks, float32 .npy, coloured preview."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlsharp import splat
from mlsharp.splat.depth import (
    DepthUnavailable,
    depth_png_scale,
    depth_to_preview,
    read_depth_npy,
    read_depth_png,
    read_depth_preview,
)
from tests.test_formats import random_scene


def test_png_is_16_bit_millimetres_with_metadata(tmp_path) -> None:
    scene = random_scene(10, depth_shape=(30, 40))
    path = splat.write(scene, tmp_path / "s.depth.png", "depth")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "I;16" and image.size == (40, 30)
        values = np.asarray(image)
        text = dict(image.text)
    assert text["depth_scale"] == "0.001" and text["depth_units"] == "m"
    assert text["focal_px"] == "812.5" and text["image_size"] == "40 30"
    expected = np.rint(scene.depth.astype(np.float64) / 0.001).astype(np.uint16)
    np.testing.assert_array_equal(values, expected)
    depth, _ = read_depth_png(path)
    np.testing.assert_allclose(depth, scene.depth, atol=0.0005 + 1e-6)


def test_far_depths_get_a_coarser_scale_that_still_fits(tmp_path) -> None:
    scene = random_scene(10)
    scene.depth[0, 0] = 150.0  # beyond 65.535 m
    scene.depth[0, 1] = np.nan  # unknown
    scene.depth[0, 2] = -1.0  # invalid
    assert depth_png_scale(scene.depth) == pytest.approx(0.003)
    path = splat.write(scene, tmp_path / "far.depth.png", "depth")
    depth, text = read_depth_png(path)
    assert float(text["depth_scale"]) == pytest.approx(0.003)
    assert depth[0, 0] == pytest.approx(150.0, abs=0.0015)
    assert np.isnan(depth[0, 1]) and np.isnan(depth[0, 2])
    valid = np.isfinite(scene.depth) & (scene.depth > 0)
    np.testing.assert_allclose(depth[valid], scene.depth[valid], atol=0.0015 + 1e-6)


def test_npy_round_trip_is_exact(tmp_path) -> None:
    scene = random_scene(10)
    path = splat.write(scene, tmp_path / "s.depth.npy", "depth-npy")
    assert path.name == "s.depth.npy"  # np.save did not add a second suffix
    depth = read_depth_npy(path)
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, scene.depth)
    assert [p.name for p in tmp_path.iterdir()] == ["s.depth.npy"]


def test_preview_colours_near_bright_far_dark_unknown_black(tmp_path) -> None:
    depth = np.tile(np.linspace(1.0, 20.0, 64, dtype=np.float32), (8, 1))
    depth[0, 0] = np.nan
    rgb = depth_to_preview(depth)
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    brightness = rgb[1].astype(int).sum(axis=1)
    assert (np.diff(brightness) <= 0).all() and brightness[0] > 3 * brightness[-1]
    assert tuple(rgb[1, 0]) == (0xFD, 0xE7, 0x25)  # viridis' yellow end for the nearest
    assert tuple(rgb[1, -1]) == (0x44, 0x01, 0x54)  # and its purple end for the farthest
    scene = random_scene(10, depth_shape=(8, 64))
    scene.depth[:] = depth
    path = splat.write(scene, tmp_path / "s.depth.preview.png", "depth-preview")
    np.testing.assert_array_equal(read_depth_preview(path), rgb)


@pytest.mark.parametrize("fmt", ["depth", "depth-npy", "depth-preview"])
def test_scene_without_depth_is_a_clear_error(tmp_path, fmt: str) -> None:
    scene = random_scene(10)
    scene.depth = None
    with pytest.raises(DepthUnavailable, match="need a prediction"):
        splat.write(scene, tmp_path / f"x{splat.SUFFIXES[fmt]}", fmt)
    assert not list(tmp_path.iterdir())


def test_foreign_files_are_rejected(tmp_path) -> None:
    rgb = tmp_path / "photo.depth.png"
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(splat.SceneFormatError, match="16-bit"):
        read_depth_png(rgb)
    plain16 = tmp_path / "plain.depth.png"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(plain16)
    with pytest.raises(splat.SceneFormatError, match="depth_scale"):
        read_depth_png(plain16)
    (tmp_path / "bad.depth.npy").write_bytes(b"nope")
    with pytest.raises(splat.SceneFormatError):
        read_depth_npy(tmp_path / "bad.depth.npy")
