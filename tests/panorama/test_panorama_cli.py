"""``mlsharp predict`` and ``mlsharp render`` on a 360° panorama, as a user runs them.

The panorama is the known box room (tests/panorama/room.py), tagged equirectangular in its
XMP like a camera's, predicted with the tiny (untrained) network: its splats carry the
photo's colours at noisy depths, so the colour of the splats in a direction tells whether
that direction came from the right part of the panorama.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlsharp import splat
from mlsharp.model import preset
from mlsharp.panorama import layout_views
from mlsharp.splat.depth import read_depth_png
from tests.panorama.room import WALLS, encode, equirect_room, gpano_xmp
from tests.panorama.seams import seam_stats

TINY_GAUSSIANS = preset("tiny").num_gaussians


def mlsharp(*args: str, cwd: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_CACHE"] = str(cwd / "cache")
    model = ["--checkpoint", str(checkpoint), "--preset", "tiny", "--device", "cpu"]
    command = [sys.executable, "-m", "mlsharp", *args]
    if args[0] == "predict":
        command += model
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, tiny_checkpoint):
    """The room panorama predicted once in every format (auto-detected from its XMP)."""
    folder = tmp_path_factory.mktemp("pano")
    (folder / "room.jpg").write_bytes(encode(equirect_room(512), "JPEG", xmp=gpano_xmp()))
    formats = ",".join(f for f in splat.FORMATS if f not in splat.DEPTH_FORMATS) + ",depth"
    result = mlsharp(
        "predict",
        "room.jpg",
        "-o",
        "out",
        "--format",
        formats,
        cwd=folder,
        checkpoint=tiny_checkpoint,
    )
    assert result.returncode == 0, result.stderr
    return folder, result


def test_one_scene_in_every_format(predicted):
    folder, result = predicted
    lines = [line for line in result.stderr.splitlines() if "room.jpg ->" in line]
    assert len(lines) == 1
    assert "512x256 equirectangular panorama, 6 views of 194 px" in lines[0]
    assert "seam mismatch" in lines[0]
    for fmt in splat.FORMATS:  # the scene formats and the three depth files
        assert (folder / "out" / f"room{splat.SUFFIXES[fmt]}").stat().st_size > 0, fmt
    scene = splat.read(folder / "out" / "room.ply")
    assert scene.metadata["panorama"] is True
    # Each view kept its own cell: about (1 / 1.19)^2 of its splats, six views.
    assert len(scene) == pytest.approx(6 * TINY_GAUSSIANS / 1.19**2, rel=0.05)
    for fmt in ("ply-standard", "splat", "spz"):
        assert len(splat.read(folder / "out" / f"room{splat.SUFFIXES[fmt]}")) == len(scene)
    depth, info = read_depth_png(folder / "out" / "room.depth.png")
    assert depth.shape == (256, 512) and "equirectangular" in info["projection"]


def test_front_is_front_up_is_up_left_is_left(predicted):
    folder, _ = predicted
    scene = splat.read(folder / "out" / "room.ply")
    unit = scene.positions / np.linalg.norm(scene.positions, axis=1, keepdims=True)
    for name, ((axis, sign), rgb) in WALLS.items():
        direction = np.zeros(3)
        direction[axis] = sign
        cone = unit @ direction > math.cos(math.radians(15))
        assert cone.sum() > 1000, name
        mean = scene.colors[cone].mean(axis=0) ** (1 / 2.2)  # roughly back to sRGB
        hue = np.dot(mean, rgb) / (np.linalg.norm(mean) * np.linalg.norm(rgb))
        assert hue > 0.97, (name, mean * 255)


def test_seams_have_no_gap_and_no_double_layer(predicted):
    folder, _ = predicted
    scene = splat.read(folder / "out" / "room.ply")
    stats = seam_stats(scene.positions, layout_views(), TINY_GAUSSIANS, layers=2)
    # Bounds of docs/panorama.md: no seam direction farther than 1.5 grid steps from a
    # splat; the splats per direction at a seam stay within 0.5-1.6 of one view's.
    assert stats.probes > 100
    assert stats.max_gap < 1.5, stats
    assert stats.min_layers > 0.5 and stats.max_layers < 1.6, stats


def test_render_turns_in_place_and_walks(predicted, tiny_checkpoint):
    folder, _ = predicted
    still = mlsharp(
        "render",
        "out/room.ply",
        "-o",
        "front.png",
        "--size",
        "64x48",
        cwd=folder,
        checkpoint=tiny_checkpoint,
    )
    assert still.returncode == 0, still.stderr
    front = np.asarray(Image.open(folder / "front.png"), dtype=np.float64)
    centre = front[16:32, 24:40].mean(axis=(0, 1))
    assert centre[0] > 1.5 * centre[1] and centre[0] > 1.5 * centre[2]  # the red front wall
    turn = mlsharp(
        "render",
        "out/room.ply",
        "-o",
        "turn.mp4",
        "--frames",
        "4",
        "--size",
        "64x48",
        cwd=folder,
        checkpoint=tiny_checkpoint,
    )
    assert turn.returncode == 0, turn.stderr
    assert "4 frames, turn" in turn.stderr  # a panorama's default path
    walk = mlsharp(
        "render",
        "out/room.ply",
        "-o",
        "walk.mp4",
        "--frames",
        "4",
        "--size",
        "64x48",
        "--trajectory",
        "walk",
        cwd=folder,
        checkpoint=tiny_checkpoint,
    )
    assert walk.returncode == 0, walk.stderr
    assert (folder / "turn.mp4").stat().st_size > 0 and (folder / "walk.mp4").stat().st_size > 0


def test_a_photo_that_is_not_2_to_1_is_one_line_and_no_output(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    (tmp_path / "photo.png").write_bytes(encode(rng.integers(0, 255, (60, 80, 3), np.uint8)))
    result = mlsharp(
        "predict", "photo.png", "-o", "out", "--panorama", cwd=tmp_path, checkpoint=tiny_checkpoint
    )
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlsharp: error: photo.png is 80x60 (aspect 1.33:1)")
    assert not (tmp_path / "out").exists()


def test_no_panorama_predicts_a_tagged_panorama_as_a_photo(tmp_path, tiny_checkpoint):
    (tmp_path / "room.jpg").write_bytes(encode(equirect_room(128), "JPEG", xmp=gpano_xmp()))
    result = mlsharp(
        "predict",
        "room.jpg",
        "-o",
        "out",
        "--no-panorama",
        "-q",
        cwd=tmp_path,
        checkpoint=tiny_checkpoint,
    )
    assert result.returncode == 0, result.stderr
    assert len(splat.read(tmp_path / "out" / "room.ply")) == TINY_GAUSSIANS
