"""``.spz``: byte layout against Niantic's published description, round trips, bad files.

The expected bytes below are worked out by hand from the formulas of nianticlabs/spz
(README "File Format", ``load-spz.cc``): 24-bit fixed point with 12 fractional bits,
``toUint8(x) = clamp(round(x), 0, 255)``, colours ``f_dc * 0.15 * 255 + 127.5``, scales
``(ln s + 10) * 16``, v2 rotations ``xyz * 127.5 + 127.5`` with w >= 0, v3 "smallest three",
and the RUB frame (OpenCV y and z negated).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from mlsharp import splat
from mlsharp.gaussians import Gaussians
from mlsharp.splat import SceneFormatError
from mlsharp.splat.ply import linear_to_srgb
from mlsharp.splat.spz import encode_spz, read_spz, write_spz
from tests.test_formats import random_scene

C = float(np.sqrt(0.5))


def two_splats() -> Gaussians:
    """Two splats with values chosen away from rounding ties (sRGB colours, OpenCV frame)."""
    return Gaussians(
        positions=np.array([[1.5, -2.25, 0.125], [-3.0, 0.5, 10.0]], np.float32),
        scales=np.array([[1.0, 0.1, 0.01], [2.0, 0.5, 1e-6]], np.float32),
        # A: 90 degrees about z. B: w < 0 (the writer must flip the sign for v2).
        rotations=np.array([[C, 0, 0, C], [-0.5, 0.5, 0.5, 0.5]], np.float32),
        colors=np.array([[0.75, 0.2, 1.0], [0.0, 0.4, 0.6]], np.float32),
        opacities=np.array([0.25, 0.8], np.float32),
        focal_px=500.0,
        image_size=(4, 3),
        color_space="sRGB",
    )


def test_v2_bytes_follow_the_published_layout(tmp_path) -> None:
    path = write_spz(two_splats(), tmp_path / "two.spz")
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # one gzip stream
    data = gzip.decompress(raw)
    assert len(data) == 16 + 2 * (9 + 1 + 3 + 3 + 3)
    # Header: magic "NGSP", version 2, 2 points, SH degree 0, 12 fractional bits, flags 0.
    assert data[:16] == bytes.fromhex("4e475350 02000000 02000000 00 0c 00 00")
    assert struct.unpack("<IIIBBBB", data[:16]) == (0x5053474E, 2, 2, 0, 12, 0, 0)
    # Positions in RUB: A (1.5, 2.25, -0.125) -> 6144, 9216, -512; B (-3, -0.5, -10).
    assert data[16:34] == bytes.fromhex("001800 002400 00feff 00d0ff 00f8ff 0060ff")
    assert data[34:36] == bytes([64, 204])  # alphas: 0.25*255 = 63.75, 0.8*255 = 204
    # Colours: sRGB 0.75 -> (0.25/C0)*38.25+127.5 = 161.4; 0.2 -> 86.8; 1.0 -> 195.3;
    # 0.0 -> 59.7; 0.4 -> 113.9; 0.6 -> 141.1.
    assert data[36:42] == bytes([161, 87, 195, 60, 114, 141])
    # Scales: (ln 1 + 10)*16 = 160; ln 0.1 -> 123.2; ln 0.01 -> 86.3; ln 2 -> 171.1;
    # ln 0.5 -> 148.9; ln 1e-6 -> negative, clamped to 0.
    assert data[42:48] == bytes([160, 123, 86, 171, 149, 0])
    # Rotations (x, y, z) of RUB quaternions: A (0, 0, -C, C) -> 127.5, 127.5, 37.3;
    # B (x,y,z,w) = (0.5, -0.5, -0.5, -0.5), negated for w >= 0 to (-0.5, 0.5, 0.5, 0.5)
    # -> 63.75, 191.25, 191.25.
    assert data[48:54] == bytes([128, 128, 37, 64, 191, 191])


def test_v3_rotation_is_smallest_three(tmp_path) -> None:
    data = encode_spz(two_splats(), version=3)
    assert struct.unpack("<I", data[4:8]) == (3,)
    assert len(data) == 16 + 2 * (9 + 1 + 3 + 3 + 4)
    rotations = data[48:56]  # after header, positions, alphas, colours and scales
    # A in RUB, (x, y, z, w) = (0, 0, -C, C): largest |.| first at index 2, negative, so all
    # signs flip: x, y -> sign 1, mag 0; w -> sign 1, mag 511.
    comp_a = (2 << 30) | (512 << 20) | (512 << 10) | (512 | 511)
    assert rotations[:4] == struct.pack("<I", comp_a)
    write_spz(two_splats(), tmp_path / "v3.spz", version=3)
    back = read_spz(tmp_path / "v3.spz")
    assert back.metadata["spz_version"] == 3
    dots = np.abs(np.sum(back.rotations * two_splats().rotations, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-5)


def test_same_scene_gives_the_same_bytes(tmp_path) -> None:
    scene = random_scene(100)
    first = write_spz(scene, tmp_path / "a.spz").read_bytes()
    assert write_spz(scene, tmp_path / "b.spz").read_bytes() == first


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dots = np.clip(np.abs(np.sum(a.astype(np.float64) * b, axis=1)), 0.0, 1.0)
    return np.degrees(2 * np.arccos(dots))


# v2 stores x, y, z in 8 bits and derives w: when w is near 0 a 1/255 error in xyz moves w
# by up to sqrt(2 * sqrt(3) / 255) ~ 0.12, i.e. ~13 degrees; typical errors are < 1 degree.
# v3 keeps 9 bits of magnitude per component: ~0.1 degree.
@pytest.mark.parametrize(("version", "max_angle", "median_angle"), [(2, 15.0, 1.0), (3, 0.3, 0.12)])
def test_round_trip_within_quantization(
    tmp_path, version: int, max_angle: float, median_angle: float
) -> None:
    scene = random_scene(5000, seed=7)
    back = splat.read(splat.write(scene, tmp_path / "s.spz", "spz", version=version))
    assert len(back) == len(scene)
    np.testing.assert_allclose(back.positions, scene.positions, rtol=0, atol=0.5 / 4096 + 1e-5)
    # Half a colour step in sRGB: C0 / (0.15 * 255) / 2.
    colour_step = 0.28209479 / (0.15 * 255)
    np.testing.assert_allclose(
        linear_to_srgb(back.colors),
        linear_to_srgb(scene.colors),
        atol=colour_step / 2 + 1e-5,
    )
    np.testing.assert_allclose(back.opacities, scene.opacities, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(np.log(back.scales), np.log(scene.scales), atol=0.5 / 16 + 1e-5)
    angles = _angles_deg(back.rotations, scene.rotations)
    assert angles.max() < max_angle
    assert np.median(angles) < median_angle
    assert back.depth is None and back.focal_px == 512.0


def test_frame_option_controls_the_stored_axes(tmp_path) -> None:
    scene = random_scene(50)
    rub = tmp_path / "rub.spz"
    rdf = tmp_path / "rdf.spz"
    splat.write(scene, rub, "spz")
    splat.write(scene, rdf, "spz", frame="opencv")
    as_stored = read_spz(rdf, frame="opengl")  # misread on purpose: no conversion back
    np.testing.assert_allclose(as_stored.positions[:, 1], -scene.positions[:, 1], atol=2e-4)
    np.testing.assert_allclose(read_spz(rdf, frame="opencv").positions, scene.positions, atol=2e-4)
    np.testing.assert_allclose(splat.read(rub).positions, scene.positions, atol=2e-4)
    # In RUB everything in front of the camera has negative z.
    stored = np.frombuffer(gzip.decompress(rub.read_bytes())[16 : 16 + 9], np.uint8)
    z_fixed = int.from_bytes(bytes(stored[6:9]), "little", signed=True)
    assert z_fixed == round(-float(scene.positions[0, 2]) * 4096)


def test_large_scenes_trade_fractional_bits_for_range(tmp_path) -> None:
    scene = random_scene(3)
    scene.positions[0] = [5000.0, -1.0, 1.0]  # beyond +-2048 m: 12 bits cannot hold it
    path = write_spz(scene, tmp_path / "far.spz")
    assert gzip.decompress(path.read_bytes())[13] == 10  # 5000 * 2**10 < 2**23 <= 5000 * 2**11
    back = read_spz(path)
    np.testing.assert_allclose(back.positions, scene.positions, atol=0.5 / 2**10 + 1e-3)
    scene.positions[0] = [1e7, 0.0, 1.0]  # beyond even whole units: clipped
    path = write_spz(scene, tmp_path / "huge.spz")
    assert gzip.decompress(path.read_bytes())[13] == 0
    assert read_spz(path).positions[0, 0] == 2**23 - 1


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"definitely not gzip", "not a valid gzip stream"),
        (_gz(b"NGSQ" + bytes(12)), "bad magic"),
        (_gz(struct.pack("<IIIBBBB", 0x5053474E, 7, 1, 0, 12, 0, 0)), "version 7"),
        (b"NGSP" + struct.pack("<I", 4) + bytes(40), "stream table"),
        (b"NGSP" + struct.pack("<I", 5) + bytes(40), "version 5"),
        (b"NGSP" + struct.pack("<IIBBBBI", 4, 2**31, 0, 12, 0, 5, 32) + bytes(12), "more than"),
        (_gz(struct.pack("<IIIBBBB", 0x5053474E, 2, 3, 0, 12, 0, 0) + bytes(20)), "truncated"),
        (_gz(b"NGSP"), "too short"),
        (_gz(struct.pack("<IIIBBBB", 0x5053474E, 2, 2**31, 0, 12, 0, 0)), "more than the file"),
    ],
)
def test_unreadable_files_raise_scene_format_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.spz"
    path.write_bytes(content)
    with pytest.raises(SceneFormatError, match=message):
        splat.read(path)
