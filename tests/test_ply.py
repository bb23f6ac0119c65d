"""Tests of mlsharp.splat.ply: the ml-sharp .ply layout, read back with plyfile (independent)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlsharp import _atomic
from mlsharp.errors import ConfigError, MlsharpError
from mlsharp.gaussians import Gaussians
from mlsharp.splat import FORMATS, PlyFormatError, read_ply, read_ply_raw, write, write_ply
from mlsharp.splat.ply import linear_to_srgb, ply_header

plyfile = pytest.importorskip("plyfile")

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMAT_DOC = REPO_ROOT.parent / "shared" / "reference" / "sharp_ply_format.md"

# The header of sharp_ply_format.md ("Header (byte-exact ...)"), vertex count as {n}.
EXPECTED_HEADER = """\
ply
format binary_little_endian 1.0
element vertex {n}
property float x
property float y
property float z
property float f_dc_0
property float f_dc_1
property float f_dc_2
property float opacity
property float scale_0
property float scale_1
property float scale_2
property float rot_0
property float rot_1
property float rot_2
property float rot_3
element extrinsic 16
property float extrinsic
element intrinsic 9
property float intrinsic
element image_size 2
property uint image_size
element frame 2
property int frame
element disparity 2
property float disparity
element color_space 1
property uchar color_space
element version 3
property uchar version
end_header
"""

# extrinsic + intrinsic + image_size + frame + disparity + color_space + version
SUPPLEMENT_BYTES = 64 + 36 + 8 + 8 + 8 + 1 + 3
C0 = np.sqrt(1.0 / (4.0 * np.pi))
N = 1000
FOCAL = 1234.5
IMAGE_SIZE = (1001, 777)


# The reference's element order (shared/reference/sharp_ply_format.md).
ELEMENTS = [
    "vertex",
    "extrinsic",
    "intrinsic",
    "image_size",
    "frame",
    "disparity",
    "color_space",
    "version",
]


def make_gaussians(
    n: int = N, seed: int = 0, color_space: str = "linearRGB", dtype: type = np.float32
) -> Gaussians:
    """Random but valid Gaussians (sorted scales, unit quaternions, values in (0, 1))."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.5, 20.0, n)
    positions = np.stack([rng.uniform(-5, 5, n) * z, rng.uniform(-4, 4, n) * z, z], axis=1)
    scales = -np.sort(-np.exp(rng.uniform(-7.0, 0.0, (n, 3))), axis=1)
    quats = rng.standard_normal((n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return Gaussians(
        positions=positions.astype(dtype),
        scales=scales.astype(dtype),
        rotations=quats.astype(dtype),
        colors=rng.uniform(0.01, 0.99, (n, 3)).astype(dtype),
        opacities=rng.uniform(0.01, 0.99, n).astype(dtype),
        focal_px=FOCAL,
        image_size=IMAGE_SIZE,
        color_space=color_space,  # type: ignore[arg-type]
    )


def srgb_from_linear_f64(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def linear_from_srgb_f64(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64)
    return np.where(c <= 0.04045, c / 12.92, np.power((c + 0.055) / 1.055, 2.4))


def header_of(path: Path) -> bytes:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end]


@pytest.fixture
def gaussians() -> Gaussians:
    return make_gaussians()


@pytest.fixture
def written(tmp_path: Path, gaussians: Gaussians) -> Path:
    return write_ply(gaussians, tmp_path / "scene.ply")


# --- layout -------------------------------------------------------------------------------


def test_header_is_byte_identical(written: Path) -> None:
    assert header_of(written) == EXPECTED_HEADER.format(n=N).encode("ascii")
    assert ply_header(N) == EXPECTED_HEADER.format(n=N).encode("ascii")


@pytest.mark.skipif(not FORMAT_DOC.exists(), reason="reference format doc not available")
def test_header_matches_reference_doc() -> None:
    text = FORMAT_DOC.read_text()
    block = re.search(r"## Header.*?```\n(.*?)```", text, re.S)
    assert block is not None
    assert ply_header(1_179_648) == block.group(1).encode("ascii")


def test_file_size(written: Path) -> None:
    size = len(EXPECTED_HEADER.format(n=N)) + N * 56 + SUPPLEMENT_BYTES
    assert written.stat().st_size == size


def test_plyfile_reads_reference_layout(written: Path, gaussians: Gaussians) -> None:
    ply = plyfile.PlyData.read(str(written))
    assert ply.byte_order == "<" and not ply.text
    assert not ply.comments and not ply.obj_info
    names = [e.name for e in ply.elements]
    assert names == ELEMENTS
    counts = [e.count for e in ply.elements]
    assert counts == [N, 16, 9, 2, 2, 2, 1, 3]

    v = ply["vertex"].data
    assert [p.name for p in ply["vertex"].properties] == [
        "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    ]  # fmt: skip
    assert all(v.dtype[name] == np.dtype("<f4") for name in v.dtype.names)

    for i, axis in enumerate("xyz"):
        np.testing.assert_array_equal(v[axis], gaussians.positions[:, i])
    srgb = srgb_from_linear_f64(gaussians.colors)
    for i in range(3):
        np.testing.assert_allclose(v[f"f_dc_{i}"], (srgb[:, i] - 0.5) / C0, rtol=0, atol=2e-6)
    a = gaussians.opacities.astype(np.float64)
    np.testing.assert_allclose(v["opacity"], np.log(a / (1 - a)), rtol=0, atol=2e-6)
    for i in range(3):
        np.testing.assert_allclose(
            v[f"scale_{i}"], np.log(gaussians.scales[:, i].astype(np.float64)), rtol=0, atol=2e-6
        )
    for i in range(4):
        np.testing.assert_array_equal(v[f"rot_{i}"], gaussians.rotations[:, i])

    def values(name: str, dtype: str) -> np.ndarray:
        data = ply[name].data
        assert data.dtype.names == (name,)
        assert data.dtype[name] == np.dtype(dtype)
        return data[name]

    np.testing.assert_array_equal(values("extrinsic", "<f4"), np.eye(4).reshape(-1))
    w, h = IMAGE_SIZE
    np.testing.assert_array_equal(
        values("intrinsic", "<f4"),
        np.array([FOCAL, 0, w * 0.5, 0, FOCAL, h * 0.5, 0, 0, 1], dtype=np.float32),
    )
    np.testing.assert_array_equal(values("image_size", "<u4"), [w, h])
    np.testing.assert_array_equal(values("frame", "<i4"), [1, N])
    inv_z = 1.0 / gaussians.positions[:, 2]
    np.testing.assert_allclose(
        values("disparity", "<f4"), np.quantile(inv_z, [0.1, 0.9]), rtol=1e-6
    )
    np.testing.assert_array_equal(values("color_space", "u1"), [0])
    np.testing.assert_array_equal(values("version", "u1"), [1, 5, 0])


def test_srgb_input_is_not_converted_again(tmp_path: Path) -> None:
    g = make_gaussians(color_space="sRGB", seed=3)
    path = write_ply(g, tmp_path / "srgb.ply")
    v = plyfile.PlyData.read(str(path))["vertex"].data
    for i in range(3):
        np.testing.assert_allclose(
            v[f"f_dc_{i}"], (g.colors[:, i].astype(np.float64) - 0.5) / C0, rtol=0, atol=1e-6
        )
    back = read_ply(path)
    assert back.color_space == "linearRGB"
    np.testing.assert_allclose(back.colors, linear_from_srgb_f64(g.colors), rtol=0, atol=1e-5)


def test_float64_input_is_written_as_float32(tmp_path: Path) -> None:
    g64 = make_gaussians(dtype=np.float64, seed=5)
    g32 = make_gaussians(dtype=np.float32, seed=5)
    a = write_ply(g64, tmp_path / "a.ply").read_bytes()
    b = write_ply(g32, tmp_path / "b.ply").read_bytes()
    assert len(a) == len(b)
    v = read_ply_raw(tmp_path / "a.ply")["vertex"]
    np.testing.assert_array_equal(v["x"], g32.positions[:, 0])


def test_empty_scene(tmp_path: Path) -> None:
    g = make_gaussians(n=0)
    path = write_ply(g, tmp_path / "empty.ply")
    assert path.stat().st_size == len(EXPECTED_HEADER.format(n=0)) + SUPPLEMENT_BYTES
    raw = read_ply_raw(path)
    assert len(raw["vertex"]) == 0
    assert np.isnan(raw["disparity"]["disparity"]).all()
    np.testing.assert_array_equal(raw["frame"]["frame"], [1, 0])
    assert len(read_ply(path)) == 0


# --- reading ------------------------------------------------------------------------------


def test_round_trip(written: Path, gaussians: Gaussians) -> None:
    back = read_ply(written)
    assert len(back) == N
    for name in ("positions", "scales", "rotations", "colors", "opacities"):
        assert getattr(back, name).dtype == np.float32, name
    np.testing.assert_array_equal(back.positions, gaussians.positions)
    np.testing.assert_array_equal(back.rotations, gaussians.rotations)
    np.testing.assert_allclose(back.scales, gaussians.scales, rtol=2e-6)
    np.testing.assert_allclose(back.opacities, gaussians.opacities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.colors, gaussians.colors, rtol=0, atol=1e-5)
    assert back.focal_px == pytest.approx(FOCAL)
    assert back.image_size == IMAGE_SIZE
    assert isinstance(back.image_size[0], int)
    assert back.color_space == "linearRGB"
    assert back.metadata["ply_version"] == (1, 5, 0)


def test_read_ply_raw(written: Path, gaussians: Gaussians) -> None:
    raw = read_ply_raw(written)
    assert list(raw) == ELEMENTS
    assert raw["vertex"].dtype.names[:3] == ("x", "y", "z")
    assert raw["vertex"].dtype.itemsize == 56
    assert raw["image_size"].dtype["image_size"] == np.dtype("<u4")
    assert raw["vertex"].flags.writeable
    np.testing.assert_array_equal(raw["vertex"]["z"], gaussians.positions[:, 2])


def test_reads_plain_3dgs_file_with_extra_properties(tmp_path: Path) -> None:
    """Extra vertex properties are ignored; without supplements use the reference defaults."""
    rng = np.random.default_rng(7)
    n = 50
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.empty(n, dtype=[(name, "f4") for name in names])
    for name in names:
        data[name] = rng.standard_normal(n)
    path = tmp_path / "3dgs.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(path))

    g = read_ply(path)
    assert g.focal_px == 512.0
    assert g.image_size == (640, 480)
    assert g.color_space == "linearRGB"
    # No color_space element: the colours are linear already (reference default).
    sh = np.stack([data[f"f_dc_{i}"] for i in range(3)], axis=1).astype(np.float64)
    np.testing.assert_allclose(g.colors, sh * C0 + 0.5, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        g.opacities, 1 / (1 + np.exp(-data["opacity"].astype(float))), rtol=1e-6
    )
    np.testing.assert_array_equal(g.positions[:, 1], data["y"])


def test_reads_big_endian(tmp_path: Path, written: Path, gaussians: Gaussians) -> None:
    ply = plyfile.PlyData.read(str(written))
    big = tmp_path / "big.ply"
    plyfile.PlyData(list(ply.elements), byte_order=">").write(str(big))
    assert b"format binary_big_endian 1.0" in header_of(big)
    back = read_ply(big)
    np.testing.assert_array_equal(back.positions, gaussians.positions)
    np.testing.assert_allclose(back.colors, gaussians.colors, rtol=0, atol=1e-5)
    assert back.image_size == IMAGE_SIZE


# --- errors -------------------------------------------------------------------------------


def assert_ply_error(path: Path, match: str | None = None) -> PlyFormatError:
    with pytest.raises(PlyFormatError) as info:
        read_ply(path)
    err = info.value
    message = str(err)
    assert path.name in message
    assert "\n" not in message
    if match:
        assert match in message
    return err


def test_error_class() -> None:
    assert issubclass(PlyFormatError, MlsharpError)
    assert issubclass(PlyFormatError, ValueError)
    assert PlyFormatError.code == "invalid_ply"
    assert PlyFormatError.exit_code == 3
    assert PlyFormatError.http_status == 422


def test_text_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a ply file\n")
    assert_ply_error(path, "ply")
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    assert_ply_error(empty)
    binary = tmp_path / "photo.ply"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_ply_error(binary)


def test_truncated_file_is_rejected(tmp_path: Path, written: Path) -> None:
    data = written.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[:-1])
    assert_ply_error(cut, "truncated")
    header_only = tmp_path / "header_only.ply"
    header_only.write_bytes(data[: len(header_of(written)) - 5])
    assert_ply_error(header_only, "end_header")


def test_missing_vertex_property_is_rejected(tmp_path: Path, written: Path) -> None:
    ply = plyfile.PlyData.read(str(written))
    v = ply["vertex"].data
    keep = [name for name in v.dtype.names if name != "opacity"]
    reduced = np.empty(len(v), dtype=[(name, "f4") for name in keep])
    for name in keep:
        reduced[name] = v[name]
    path = tmp_path / "no_opacity.ply"
    elements = [plyfile.PlyElement.describe(reduced, "vertex"), *list(ply.elements)[1:]]
    plyfile.PlyData(elements).write(str(path))
    assert_ply_error(path, "opacity")


def test_ascii_ply_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ascii.ply"
    data = np.zeros(2, dtype=[("x", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=True).write(str(path))
    assert_ply_error(path, "ASCII")


# --- atomic writes ------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_write_creates_parent_and_leaves_no_temp(tmp_path: Path, gaussians: Gaussians) -> None:
    dest = tmp_path / "a" / "b" / "scene.ply"
    result = write_ply(gaussians, str(dest))
    assert result == dest and isinstance(result, Path)
    assert dest.is_file()
    assert leftovers(dest.parent) == []


def test_failed_write_leaves_nothing(
    tmp_path: Path, gaussians: Gaussians, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(_atomic.os, "fsync", boom)
    dest = tmp_path / "scene.ply"
    with pytest.raises(OSError, match="disk on fire"):
        write_ply(gaussians, dest)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"ply\n"
        yield np.zeros(1000, dtype=np.float32)
        raise RuntimeError("producer failed")

    dest = tmp_path / "partial.ply"
    with pytest.raises(RuntimeError, match="producer failed"):
        _atomic.atomic_write(dest, chunks())
    assert list(tmp_path.iterdir()) == []


def test_invalid_gaussians_leave_nothing(tmp_path: Path, gaussians: Gaussians) -> None:
    gaussians.color_space = "XYZ"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="color_space"):
        write_ply(gaussians, tmp_path / "scene.ply")
    gaussians.color_space = "linearRGB"
    gaussians.image_size = (-1, 10)
    with pytest.raises(ValueError, match="image_size"):
        write_ply(gaussians, tmp_path / "scene.ply")
    assert list(tmp_path.iterdir()) == []


def test_existing_dest_replaced_only_on_success(
    tmp_path: Path, gaussians: Gaussians, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "scene.ply"
    dest.write_bytes(b"old contents")

    def fail_replace(src: str, dst: str) -> None:
        raise OSError("rename refused")

    with monkeypatch.context() as m:
        m.setattr(_atomic.os, "replace", fail_replace)
        with pytest.raises(OSError, match="rename refused"):
            write_ply(gaussians, dest)
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []

    write_ply(gaussians, dest)
    assert header_of(dest) == EXPECTED_HEADER.format(n=N).encode("ascii")
    assert leftovers(tmp_path) == []


def test_dest_is_a_directory(tmp_path: Path, gaussians: Gaussians) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(OSError):
        write_ply(gaussians, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert leftovers(dest) == []


# --- dispatcher, imports, scale ----------------------------------------------------------


def test_dispatcher(tmp_path: Path, gaussians: Gaussians) -> None:
    assert FORMATS[0] == "ply"  # the default; the other formats are tested in test_formats.py
    a = write(gaussians, tmp_path / "a.ply")
    b = write_ply(gaussians, tmp_path / "b.ply")
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ConfigError, match="splatv"):
        write(gaussians, tmp_path / "c.splatv", format="splatv")  # type: ignore[arg-type]


def test_splat_does_not_import_torch_or_plyfile() -> None:
    code = (
        "import sys, mlsharp.splat; "
        "bad = [m for m in ('torch', 'plyfile') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_full_size_scene(tmp_path: Path) -> None:
    """The reference vertex count (1,179,648) writes and reads back with the right size."""
    n = 2 * 768 * 768
    g = make_gaussians(n=n, seed=11)
    path = write_ply(g, tmp_path / "full.ply")
    assert path.stat().st_size == len(EXPECTED_HEADER.format(n=n)) + n * 56 + SUPPLEMENT_BYTES
    raw = read_ply_raw(path)
    assert len(raw["vertex"]) == n
    np.testing.assert_array_equal(raw["vertex"]["z"], g.positions[:, 2])
    np.testing.assert_array_equal(raw["frame"]["frame"], [1, n])


def test_bit_identical_to_torch_reference_math(written: Path, gaussians: Gaussians) -> None:
    """f_dc, opacity, scales and disparity use the reference's float32 torch arithmetic."""
    torch = pytest.importorskip("torch")
    raw = read_ply_raw(written)
    v = raw["vertex"]
    colors = torch.from_numpy(gaussians.colors)
    torch_srgb = torch.where(
        colors <= 0.0031308, colors * 12.92, 1.055 * colors.pow(1 / 2.4) - 0.055
    ).numpy()
    ours_srgb = linear_to_srgb(gaussians.colors)
    # pow implementations differ by one float32 ulp (one ulp of 1.0 after the "- 0.055") ...
    np.testing.assert_allclose(ours_srgb, torch_srgb, rtol=0, atol=2**-23)
    # ... and from the same sRGB values the SH encoding is torch's, bit for bit.
    f_dc = np.stack([v[f"f_dc_{i}"] for i in range(3)], axis=1)
    np.testing.assert_array_equal(f_dc, ((torch.from_numpy(ours_srgb) - 0.5) / C0).numpy())
    opac = torch.from_numpy(gaussians.opacities)
    # ... as do log implementations.
    np.testing.assert_array_max_ulp(v["opacity"], torch.log(opac / (1.0 - opac)).numpy(), 1)
    scales = np.stack([v[f"scale_{i}"] for i in range(3)], axis=1)
    np.testing.assert_array_max_ulp(
        scales, torch.log(torch.from_numpy(gaussians.scales)).numpy(), 1
    )
    disparity = 1.0 / torch.from_numpy(gaussians.positions[:, 2])
    expected = torch.quantile(disparity, q=torch.tensor([0.1, 0.9])).numpy()
    np.testing.assert_array_equal(raw["disparity"]["disparity"], expected)
