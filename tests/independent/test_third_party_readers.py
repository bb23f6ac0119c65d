"""Our files read by other people's code: PlayCanvas' splat-transform, Niantic's SPZ library
and Khronos' glTF validator (pinned in tests/npm/package.json).

splat-transform converts each of our files back to a PLY, which plyfile (another
independent reader) parses; the values must match the scene we wrote, splat by splat,
within the format's quantization. Splats are paired by position (nearest neighbour), so the
check does not rely on our writers' ordering. The scene has splats kilometres away, as
SHARP's background layer does: a fixed-point format must keep them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData

from mlsharp import splat
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import change_frame, normalized_quaternions, srgb_colors
from mlsharp.splat.ply import SH_C0
from mlsharp.splat.spz import fractional_bits_for
from tests.e2e.scenes import marker_scene
from tests.independent.conftest import far_scene
from tests.npmtools import NpmTools

pytestmark = pytest.mark.slow


def stored(scene: Gaussians, frame: str) -> dict[str, np.ndarray]:
    """What a file in ``frame`` should hold: positions, rotations, sRGB, opacity, log-scales."""
    positions, rotations = change_frame(
        scene.positions, normalized_quaternions(scene.rotations), "opencv", frame
    )
    return {
        "positions": positions.astype(np.float64),
        "rotations": rotations.astype(np.float64),
        "srgb": srgb_colors(scene).astype(np.float64),
        "opacity": scene.opacities.astype(np.float64),
        "log_scales": np.log(scene.scales.astype(np.float64)),
    }


def nearest(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """For each found position, the index of the nearest expected one (must be one-to-one)."""
    pairs = np.empty(len(found), dtype=np.int64)
    for start in range(0, len(found), 512):
        block = found[start : start + 512]
        distance = ((block[:, None, :] - expected[None, :, :]) ** 2).sum(axis=2)
        pairs[start : start + 512] = distance.argmin(axis=1)
    assert len(np.unique(pairs)) == len(expected), "every splat is found exactly once"
    return pairs


def from_ply(path: Path) -> dict[str, np.ndarray]:
    """splat-transform's PLY, decoded with plyfile (3DGS conventions)."""
    v = PlyData.read(path)["vertex"]

    def cols(*names: str) -> np.ndarray:
        return np.stack([np.asarray(v[n], dtype=np.float64) for n in names], axis=1)

    return {
        "positions": cols("x", "y", "z"),
        "rotations": cols("rot_0", "rot_1", "rot_2", "rot_3"),
        "srgb": 0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2"),
        "opacity": 1.0 / (1.0 + np.exp(-np.asarray(v["opacity"], dtype=np.float64))),
        "log_scales": cols("scale_0", "scale_1", "scale_2"),
    }


def sog_position_tolerance(positions: np.ndarray) -> np.ndarray:
    """SOG's position step: 16 bits over sign(v) ln(1 + |v|), per axis, half a step."""
    t = np.sign(positions) * np.log1p(np.abs(positions))
    half_step = (t.max(axis=0) - t.min(axis=0)) / 65535 / 2
    return (np.abs(positions) + 1.0) * half_step * 1.01 + 1e-6


def spz_position_tolerance(positions: np.ndarray) -> float:
    """SPZ's position step: half of 2**-fractional_bits."""
    return 0.5 / 2 ** fractional_bits_for(positions) + 1e-6


#: (file format, writer options, frame stored, tolerances): positions (None: computed),
#: sRGB colour, opacity, natural-log scale, and the least |q . q'| of the rotations.
CASES = {
    "ply": ("ply", {}, "opencv", 1e-5, 1e-5, 1e-5, 1e-5, 1 - 1e-6),
    "splat": ("splat", {}, "opencv", 1e-5, 0.5 / 255 + 1e-5, 0.5 / 255 + 1e-5, 1e-5, 0.9995),
    "spz-v3": ("spz", {"version": 3}, "opengl", None, 0.0038, 0.5 / 255 + 1e-5, 1 / 32, 0.99999),
    "spz-v4": ("spz", {"version": 4}, "opengl", None, 0.0038, 0.5 / 255 + 1e-5, 1 / 32, 0.99999),
    "sog": ("sog", {}, "opencv", None, 0.025, 0.5 / 255 + 1e-5, 0.05, 0.9999),
}


@pytest.mark.parametrize("case", list(CASES))
def test_splat_transform_reads_our_files(npm_tools: NpmTools, tmp_path: Path, case: str) -> None:
    fmt, options, frame, pos_tol, color_tol, alpha_tol, scale_tol, min_dot = CASES[case]
    scene = far_scene()
    source = splat.write(scene, tmp_path / f"scene{splat.SUFFIXES[fmt]}", fmt, **options)
    npm_tools.splat_transform(source, tmp_path / "back.ply")
    found, expected = from_ply(tmp_path / "back.ply"), stored(scene, frame)
    assert len(found["positions"]) == len(scene)
    pairs = nearest(found["positions"], expected["positions"])
    want = {key: values[pairs] for key, values in expected.items()}
    if pos_tol is None:
        pos_tol = (
            sog_position_tolerance(want["positions"])
            if fmt == "sog"
            else spz_position_tolerance(expected["positions"])
        )
    error = np.abs(found["positions"] - want["positions"])
    assert (error <= pos_tol).all(), f"position error up to {error.max()}"
    far = np.linalg.norm(want["positions"], axis=1) > 1000
    assert far.sum() > 10  # kilometres away, and within the tolerance above
    assert np.abs(found["srgb"] - want["srgb"]).max() <= color_tol
    assert np.abs(found["opacity"] - want["opacity"]).max() <= alpha_tol
    assert np.abs(found["log_scales"] - want["log_scales"]).max() <= scale_tol
    dots = np.abs((found["rotations"] * want["rotations"]).sum(axis=1))
    dots /= np.linalg.norm(found["rotations"], axis=1)
    assert dots.min() >= min_dot, (
        f"rotations off by up to {math.degrees(2 * math.acos(min(1, dots.min()))):.2f} deg"
    )


@pytest.mark.parametrize("version", [2, 3, 4])
def test_niantics_library_reads_our_spz(npm_tools: NpmTools, tmp_path: Path, version: int) -> None:
    scene = far_scene(1500)
    path = splat.write(scene, tmp_path / "scene.spz", "spz", version=version)
    cloud = npm_tools.json("spz-decode.mjs", path)
    expected = stored(scene, "opengl")  # SPZ's own convention, RUB
    n = cloud["numPoints"]
    assert n == len(scene) and cloud["shDegree"] == 0
    positions = np.asarray(cloud["positions"]).reshape(n, 3)
    tolerance = spz_position_tolerance(expected["positions"])
    assert np.abs(positions - expected["positions"]).max() <= tolerance
    srgb = 0.5 + SH_C0 * np.asarray(cloud["colors"]).reshape(n, 3)
    assert np.abs(srgb - expected["srgb"]).max() <= 0.0038
    alphas = 1.0 / (1.0 + np.exp(-np.asarray(cloud["alphas"])))
    assert np.abs(alphas - expected["opacity"]).max() <= 0.5 / 255 + 1e-4
    log_scales = np.asarray(cloud["scales"]).reshape(n, 3)
    assert np.abs(log_scales - expected["log_scales"]).max() <= 1 / 32 + 1e-6
    xyzw = np.asarray(cloud["rotations"]).reshape(n, 4)
    dots = np.abs((xyzw[:, [3, 0, 1, 2]] * expected["rotations"]).sum(axis=1))
    assert dots.min() >= (0.995 if version == 2 else 0.99999)


#: The validator's only false error on KHR_gaussian_splatting (KhronosGroup/glTF-Validator#252):
#: it takes every attribute named after an extension for an invalid attribute name.
KNOWN_FALSE_ERROR = re.compile(
    r"^/meshes/\d+/primitives/\d+/attributes/KHR_gaussian_splatting:[A-Z0-9_]+$"
)


@pytest.mark.parametrize("compression", ["none", "spz"])
def test_gltf_validator_finds_no_errors_in_our_glb(
    npm_tools: NpmTools, tmp_path: Path, compression: str
) -> None:
    for name, scene in (("far", far_scene(500)), ("markers", marker_scene(100))):
        path = splat.write(scene, tmp_path / f"{name}.glb", "glb", compression=compression)
        report = npm_tools.json("validate-gltf.mjs", path)
        issues = report["issues"]
        false_errors = [
            m
            for m in issues["messages"]
            if m["severity"] == 0
            and m["code"] == "MESH_PRIMITIVE_INVALID_ATTRIBUTE"
            and KNOWN_FALSE_ERROR.match(m["pointer"])
        ]
        real_errors = [
            m for m in issues["messages"] if m["severity"] == 0 and m not in false_errors
        ]
        assert real_errors == [] and issues["numErrors"] == len(false_errors), real_errors
        assert len(false_errors) == 4  # ROTATION, SCALE, OPACITY, SH_DEGREE_0_COEF_0
        assert issues["numWarnings"] == 0, issues["messages"]
        assert report["info"]["extensionsUsed"][0] == "KHR_gaussian_splatting"


def test_we_read_the_glb_splat_transform_writes(npm_tools: NpmTools, tmp_path: Path) -> None:
    scene = far_scene(800)
    splat.write(scene, tmp_path / "scene.ply", "ply")
    npm_tools.splat_transform(tmp_path / "scene.ply", tmp_path / "theirs.glb")
    theirs = splat.read(tmp_path / "theirs.glb")
    # splat-transform turns 3DGS PLY data 180 degrees about z to make it y up (we turn it
    # about x, so the photographed side faces glTF's +Z): back in our frame, their scene is
    # ours turned 180 degrees about y.
    turned = scene.positions * np.float32([-1, 1, -1])
    pairs = nearest(theirs.positions.astype(np.float64), turned.astype(np.float64))
    assert np.abs(theirs.positions - turned[pairs]).max() < 1e-3
    assert np.abs(srgb_colors(theirs) - srgb_colors(scene)[pairs]).max() < 1e-4
    assert np.abs(theirs.opacities - scene.opacities[pairs]).max() < 1e-5
    assert np.allclose(np.sort(theirs.scales, axis=1), np.sort(scene.scales[pairs], axis=1))
