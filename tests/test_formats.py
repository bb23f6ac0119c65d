"""The format registry, coordinate frames and the viewer-safe ``.standard.ply``.

``random_scene`` builds a scene shaped like the model's output (positions in front of the
camera, small anisotropic scales, unit quaternions, linear colours, a depth map); the other
format test files reuse it.
"""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData

from mlsharp import splat
from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import change_frame
from mlsharp.splat.ply import SH_C0, linear_to_srgb
from mlsharp.splat.standard_ply import STANDARD_PROPERTIES, read_standard_ply, write_standard_ply


def random_scene(n: int = 2000, seed: int = 0, *, depth_shape=(48, 64)) -> Gaussians:
    """A deterministic scene like a prediction: OpenCV frame, z in [1, 30] m."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(1.0, 30.0, n)
    positions = np.stack([rng.uniform(-1, 1, n) * z, rng.uniform(-0.7, 0.7, n) * z, z], 1)
    quaternions = rng.normal(size=(n, 4))
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    height, width = depth_shape
    return Gaussians(
        positions=positions.astype(np.float32),
        scales=np.sort(np.exp(rng.uniform(-7.0, -1.0, (n, 3))), axis=1)[:, ::-1].astype(np.float32),
        rotations=quaternions.astype(np.float32),
        colors=rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32),
        opacities=rng.uniform(0.02, 0.98, n).astype(np.float32),
        focal_px=812.5,
        image_size=(width, height),
        depth=rng.uniform(1.0, 30.0, depth_shape).astype(np.float32),
    )


def rotation_matrices(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) -> (N, 3, 3) rotation matrices."""
    q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)


def covariances(scales: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Covariance matrices R S^2 R^T."""
    r = rotation_matrices(rotations)
    return r @ (np.asarray(scales, np.float64)[:, :, None] ** 2 * r.transpose(0, 2, 1))


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_every_format_has_a_suffix_and_media_type() -> None:
    assert set(splat.FORMATS) == {
        "ply",
        "ply-standard",
        "splat",
        "spz",
        "sog",
        "glb",
        "depth",
        "depth-npy",
        "depth-preview",
    }
    assert set(splat.SUFFIXES) == set(splat.FORMATS) == set(splat.MEDIA_TYPES)
    assert len(set(splat.SUFFIXES.values())) == len(splat.FORMATS)  # one file per name
    assert splat.MEDIA_TYPES["depth"] == splat.MEDIA_TYPES["depth-preview"] == "image/png"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.ply", "ply"),
        ("A.STANDARD.PLY", "ply-standard"),
        ("dir.v2/scene.splat", "splat"),
        ("x.spz", "spz"),
        ("x.depth.png", "depth"),
        ("x.depth.npy", "depth-npy"),
        ("x.depth.preview.png", "depth-preview"),
    ],
)
def test_format_for_path_takes_the_longest_suffix(name: str, fmt: str) -> None:
    assert splat.format_for_path(name) == fmt


def test_unknown_suffix_format_and_option_are_config_errors(tmp_path) -> None:
    scene = random_scene(10)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        splat.format_for_path("photo.png")
    with pytest.raises(ConfigError, match="unknown output format 'obj'"):
        splat.write(scene, tmp_path / "a.obj", "obj")
    with pytest.raises(ConfigError, match="takes no option 'frame'"):
        splat.write(scene, tmp_path / "a.ply", "ply", frame="opengl")
    with pytest.raises(ConfigError, match="unknown coordinate frame 'y-up'"):
        splat.write(scene, tmp_path / "a.spz", "spz", frame="y-up")
    with pytest.raises(ConfigError, match="depth map, not a scene"):
        splat.read(tmp_path / "a.depth.png")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_parse_formats_expands_depth_and_rejects_unknown_names() -> None:
    assert splat.parse_formats(" SPZ, ply ,spz") == ("spz", "ply")
    assert splat.parse_formats("ply,depth") == ("ply", "depth", "depth-npy", "depth-preview")
    assert splat.parse_formats(["depth-npy"]) == ("depth-npy",)
    with pytest.raises(ConfigError, match="'obj'"):
        splat.parse_formats("ply,obj")
    with pytest.raises(ConfigError, match="no output format"):
        splat.parse_formats(" , ")


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


def test_frame_change_is_a_rotation_about_x_applied_to_positions_and_covariances() -> None:
    scene = random_scene(500, seed=3)
    positions, rotations = change_frame(scene.positions, scene.rotations, "opencv", "opengl")
    flip = np.diag([1.0, -1.0, -1.0])  # rotation by pi about x: y up, z backward
    np.testing.assert_allclose(positions, scene.positions @ flip.T, rtol=0, atol=0)
    # Same covariance as rotating the original ellipsoid by the frame change.
    before = covariances(scene.scales, scene.rotations)
    after = covariances(scene.scales, rotations)
    np.testing.assert_allclose(after, flip @ before @ flip.T, atol=1e-9)
    # A proper rotation: handedness (determinant) is kept.
    assert np.allclose(np.linalg.det(rotation_matrices(rotations)), 1.0)
    # Its own inverse; the inputs are not modified.
    back = change_frame(positions, rotations, "opengl", "opencv")
    np.testing.assert_array_equal(back[0], scene.positions)
    np.testing.assert_array_equal(back[1], scene.rotations)
    same = change_frame(scene.positions, scene.rotations, "opencv", "opencv")
    np.testing.assert_array_equal(same[0], scene.positions)


# --------------------------------------------------------------------------------------
# ply-standard
# --------------------------------------------------------------------------------------


def test_standard_ply_is_one_vertex_element_that_plyfile_reads(tmp_path) -> None:
    scene = random_scene()
    path = splat.write(scene, tmp_path / "s.standard.ply", "ply-standard")
    ply = PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == list(STANDARD_PROPERTIES)
    assert all(vertex[name].dtype == np.dtype("<f4") for name in STANDARD_PROPERTIES)
    assert vertex.count == len(scene)
    header = path.read_bytes().split(b"end_header\n", 1)[0].decode("ascii")
    assert "comment frame opencv" in header
    assert "comment camera focal_px 812.5 image_size 64 48" in header
    # Encodings generic viewers expect: sRGB DC, logit opacity, log scale, unit quaternion.
    np.testing.assert_allclose(vertex["x"], scene.positions[:, 0])
    expected_dc = (linear_to_srgb(scene.colors) - 0.5) / np.float32(SH_C0)
    np.testing.assert_allclose(vertex["f_dc_1"], expected_dc[:, 1], rtol=1e-6, atol=1e-6)
    opacity = 1.0 / (1.0 + np.exp(-vertex["opacity"].astype(np.float64)))
    np.testing.assert_allclose(opacity, scene.opacities, rtol=1e-5)
    np.testing.assert_allclose(np.exp(vertex["scale_2"]), scene.scales[:, 2], rtol=1e-5)
    rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-6)


def test_reference_ply_is_also_readable_by_plyfile(tmp_path) -> None:
    scene = random_scene(300)
    path = splat.write(scene, tmp_path / "s.ply", "ply")
    ply = PlyData.read(str(path))
    assert ply["vertex"].count == 300 and "color_space" in [e.name for e in ply.elements]


@pytest.mark.parametrize("frame", ["opencv", "opengl"])
def test_standard_ply_round_trip(tmp_path, frame: str) -> None:
    scene = random_scene(seed=1)
    path = splat.write(scene, tmp_path / "s.standard.ply", "ply-standard", frame=frame)
    back = splat.read(path)  # the frame comes from the header comment
    assert back.metadata["frame"] == frame
    np.testing.assert_allclose(back.positions, scene.positions, atol=1e-6)
    dots = np.abs(np.sum(back.rotations * scene.rotations, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)
    np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)
    np.testing.assert_allclose(back.opacities, scene.opacities, rtol=1e-5)
    np.testing.assert_allclose(back.scales, scene.scales, rtol=1e-5)
    assert (back.focal_px, back.image_size) == (812.5, (64, 48))
    assert back.depth is None
    stored = PlyData.read(str(path))["vertex"]
    expected_y = scene.positions[:, 1] * (-1 if frame == "opengl" else 1)
    np.testing.assert_array_equal(stored["y"], expected_y)


def test_standard_ply_makes_degenerate_values_finite(tmp_path) -> None:
    scene = random_scene(4)
    scene.opacities[:] = [0.0, 1.0, 0.5, 0.5]
    scene.scales[2] = 0.0
    scene.rotations[3] = 0.0
    path = write_standard_ply(scene, tmp_path / "d.standard.ply")
    vertex = PlyData.read(str(path))["vertex"]
    for name in STANDARD_PROPERTIES:
        assert np.isfinite(vertex[name]).all(), name
    assert [vertex[f"rot_{i}"][3] for i in range(4)] == [1.0, 0.0, 0.0, 0.0]


def test_inria_layout_has_the_62_float_record(tmp_path) -> None:
    scene = random_scene(50)
    path = splat.write(scene, tmp_path / "i.standard.ply", "ply-standard", layout="inria")
    vertex = PlyData.read(str(path))["vertex"]
    names = [p.name for p in vertex.properties]
    assert len(names) == 62 and names[3:9] == ["nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9] == "f_rest_0" and names[53] == "f_rest_44" and names[54] == "opacity"
    assert not vertex["f_rest_44"].any() and not vertex["nx"].any()
    back = read_standard_ply(path)
    np.testing.assert_allclose(back.positions, scene.positions)


def test_a_plain_3dgs_ply_without_comments_reads_as_opencv_srgb(tmp_path) -> None:
    scene = random_scene(20)
    path = write_standard_ply(scene, tmp_path / "p.standard.ply")
    header, body = path.read_bytes().split(b"end_header\n", 1)
    plain = b"\n".join(line for line in header.split(b"\n") if not line.startswith(b"comment"))
    (tmp_path / "plain.ply").write_bytes(plain + b"end_header\n" + body)
    back = read_standard_ply(tmp_path / "plain.ply")
    np.testing.assert_allclose(back.positions, scene.positions)
    np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)
    assert back.focal_px == 512.0 and back.image_size == (640, 480)


def test_standard_ply_reader_rejects_files_without_3dgs_properties(tmp_path) -> None:
    path = tmp_path / "mesh.standard.ply"
    path.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
        b"property float y\nproperty float z\nend_header\n" + bytes(12)
    )
    with pytest.raises(splat.PlyFormatError, match="lacks f_dc_0"):
        splat.read(path)


def _without_comments(source, dest):
    """Copy a PLY without its header comment lines (what another 3DGS tool writes)."""
    header, body = source.read_bytes().split(b"end_header\n", 1)
    plain = b"\n".join(line for line in header.split(b"\n") if not line.startswith(b"comment"))
    dest.write_bytes(plain + b"end_header\n" + body)
    return dest


@pytest.mark.parametrize("frame", ["opencv", "opengl"])
def test_a_plain_3dgs_file_named_ply_is_read_as_3dgs(tmp_path, frame: str) -> None:
    # Our .standard.ply renamed to .ply: sRGB DC (not linear) and its frame comment.
    scene = random_scene(300, seed=2)
    standard = splat.write(scene, tmp_path / "s.standard.ply", "ply-standard", frame=frame)
    renamed = tmp_path / "renamed.ply"
    renamed.write_bytes(standard.read_bytes())
    assert not splat.is_reference_layout(renamed)
    back = splat.read(renamed)
    assert back.metadata["frame"] == frame
    np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)
    np.testing.assert_allclose(back.positions, scene.positions, atol=1e-6)
    assert (back.focal_px, back.image_size) == (812.5, (64, 48))


def test_another_tools_3dgs_ply_is_srgb_opencv_and_takes_a_frame(tmp_path) -> None:
    scene = random_scene(200, seed=3)
    inria = splat.write(scene, tmp_path / "i.standard.ply", "ply-standard", layout="inria")
    plain = _without_comments(inria, tmp_path / "point_cloud.ply")
    back = splat.read(plain)
    np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)  # not washed out
    np.testing.assert_allclose(back.positions, scene.positions, atol=1e-6)  # OpenCV default
    up = splat.read(plain, frame="opengl")  # the caller knows better than the file
    np.testing.assert_allclose(up.positions[:, 1:], -scene.positions[:, 1:], atol=1e-6)


def test_the_reference_layout_is_detected_and_keeps_its_frame(tmp_path) -> None:
    scene = random_scene(100, seed=4)
    path = splat.write(scene, tmp_path / "s.ply", "ply")
    assert splat.is_reference_layout(path)
    back = splat.read(path)
    np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)
    assert "frame" not in back.metadata  # read_ply, not the 3DGS reader
    np.testing.assert_allclose(splat.read(path, frame="opencv").positions, scene.positions)
    with pytest.raises(ConfigError, match=r"reference layout.*opencv"):
        splat.read(path, frame="opengl")
