"""``mlsharp predict --format ...`` and ``mlsharp convert``, run as a user runs them.

One module-scoped prediction of the tiny model (CPU) writes every format; the tests read
those files with independent readers (plyfile, gzip + struct, Pillow, NumPy) and convert
between them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from mlsharp import splat
from mlsharp.model import preset
from mlsharp.splat.depth import read_depth_npy, read_depth_png
from tests.conftest import PARITY

ASTRONAUT = PARITY / "images" / "astronaut.jpg"
TINY_GAUSSIANS = preset("tiny").num_gaussians
ALL = "ply,ply-standard,splat,spz,depth"


def mlsharp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m mlsharp ARGS`` in ``cwd`` with no MLSHARP_* settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_CACHE"] = str(cwd / "cache")
    return subprocess.run(
        [sys.executable, "-m", "mlsharp", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def tiny(checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--preset", "tiny", "--device", "cpu"]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlsharp: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A folder where ``mlsharp predict --format ply,ply-standard,splat,spz,depth`` ran."""
    root = tmp_path_factory.mktemp("predict")
    shutil.copy(ASTRONAUT, root / "astronaut.jpg")
    result = mlsharp(
        "predict", "astronaut.jpg", "-o", "out", "--format", ALL, *tiny(tiny_checkpoint), cwd=root
    )
    assert result.returncode == 0, result.stderr
    return root


def test_predict_writes_every_format(predicted: Path) -> None:
    out = predicted / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "astronaut.ply",
            "astronaut.standard.ply",
            "astronaut.splat",
            "astronaut.spz",
            "astronaut.depth.png",
            "astronaut.depth.npy",
            "astronaut.depth.preview.png",
        ]
    )
    reference = PlyData.read(str(out / "astronaut.ply"))
    standard = PlyData.read(str(out / "astronaut.standard.ply"))
    assert reference["vertex"].count == standard["vertex"].count == TINY_GAUSSIANS
    assert [e.name for e in standard.elements] == ["vertex"]
    # Same splats: the default frame of ply-standard is the model's (opencv).
    for name in ("x", "y", "z", "opacity", "scale_0", "rot_0"):
        np.testing.assert_allclose(
            standard["vertex"][name], reference["vertex"][name], rtol=1e-5, atol=1e-6
        )
    assert (out / "astronaut.splat").stat().st_size == 32 * TINY_GAUSSIANS
    spz = gzip.decompress((out / "astronaut.spz").read_bytes())
    magic, version, count, sh_degree, bits, flags, _ = struct.unpack("<IIIBBBB", spz[:16])
    assert (magic, version, count, sh_degree, flags) == (0x5053474E, 2, TINY_GAUSSIANS, 0, 0)
    # Positions round-trip within the fixed-point step (the untrained tiny model puts its
    # splats kilometres away, so the writer used fewer than 12 fractional bits).
    spz_scene = splat.read(out / "astronaut.spz")
    np.testing.assert_allclose(
        spz_scene.positions[:, 2], reference["vertex"]["z"], atol=0.5 / 2**bits + 2e-3
    )
    stored_z = np.frombuffer(spz[16 + 6 : 16 + 9], np.uint8)  # SPZ stores RUB: z < 0 in front
    assert int.from_bytes(bytes(stored_z), "little", signed=True) < 0


def test_predict_depth_files_agree(predicted: Path) -> None:
    out = predicted / "out"
    exact = read_depth_npy(out / "astronaut.depth.npy")
    assert exact.shape == (512, 512) and np.isfinite(exact).all() and (exact > 0).all()
    depth, text = read_depth_png(out / "astronaut.depth.png")
    scale = float(text["depth_scale"])
    np.testing.assert_allclose(depth, exact, atol=scale / 2 + 1e-6)
    with Image.open(out / "astronaut.depth.preview.png") as preview:
        assert preview.mode == "RGB" and preview.size == (512, 512)


def test_predict_unknown_format_fails_before_any_work(tmp_path: Path, tiny_checkpoint) -> None:
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    result = mlsharp(
        "predict", "a.jpg", "-o", "out", "--format", "ply,obj", *tiny(tiny_checkpoint), cwd=tmp_path
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert "'obj'" in line and "spz" in line
    assert not (tmp_path / "out").exists()


def test_predict_skips_a_photo_when_any_output_exists(tmp_path: Path, tiny_checkpoint) -> None:
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.spz").write_bytes(b"precious")
    args = ["predict", "a.jpg", "-o", "out", "--format", "ply,spz", *tiny(tiny_checkpoint)]
    result = mlsharp(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "a.spz exists" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.spz"]
    assert (tmp_path / "out" / "a.spz").read_bytes() == b"precious"
    result = mlsharp(*args, "--overwrite", "--frame", "opengl", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a.ply").exists()
    assert splat.read(tmp_path / "out" / "a.spz", frame="opengl").positions[:, 2].min() > 0


def test_convert_chain_keeps_the_scene(predicted: Path, tmp_path: Path) -> None:
    source = predicted / "out" / "astronaut.ply"
    reference = splat.read(source)
    steps = ["a.standard.ply", "b.splat", "c.spz", "d.ply"]
    previous = source
    for name in steps:
        result = mlsharp("convert", str(previous), name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert name in result.stderr
        previous = tmp_path / name
    # The y-up variant: positions mirrored through the frame change, read back upright.
    result = mlsharp("convert", str(source), "up.standard.ply", "--frame", "opengl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    up = PlyData.read(str(tmp_path / "up.standard.ply"))["vertex"]
    np.testing.assert_allclose(up["y"], -reference.positions[:, 1], rtol=1e-6)
    np.testing.assert_allclose(
        splat.read(tmp_path / "up.standard.ply").positions, reference.positions, atol=1e-6
    )
    # After .splat and .spz the positions are within SPZ's fixed-point step.
    bits = gzip.decompress((tmp_path / "c.spz").read_bytes())[13]
    final = splat.read(tmp_path / "d.ply")
    np.testing.assert_allclose(
        np.sort(final.positions[:, 2]),
        np.sort(reference.positions[:, 2]),
        atol=0.5 / 2**bits + 2e-3,
    )
    # The standard PLY kept the camera: the reference PLY written from it has it too.
    assert splat.read(tmp_path / "a.standard.ply").focal_px == pytest.approx(reference.focal_px)


@pytest.mark.parametrize(
    ("files", "args", "code", "words"),
    [
        ({}, ["missing.ply", "x.spz"], 2, ["missing.ply", "does not exist"]),
        ({"a.ply": b"junk"}, ["a.ply", "x.obj"], 2, ["x.obj", "suffix"]),
        ({"a.obj": b"junk"}, ["a.obj", "x.ply"], 2, ["a.obj", "suffix"]),
        ({"bad.spz": b"junk"}, ["bad.spz", "x.ply"], 3, ["bad.spz", "gzip"]),
        ({"bad.ply": b"junk"}, ["bad.ply", "x.spz"], 3, ["bad.ply", "PLY"]),
        ({"bad.splat": b"abc"}, ["bad.splat", "x.spz"], 3, ["bad.splat", "multiple of 32"]),
    ],
)
def test_convert_errors_are_one_line(
    tmp_path: Path, files: dict, args: list, code: int, words: list
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    result = mlsharp("convert", *args, cwd=tmp_path)
    assert result.returncode == code
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert not (tmp_path / args[1]).exists()


def test_convert_refuses_to_overwrite_and_to_invent_depth(predicted: Path, tmp_path: Path) -> None:
    source = predicted / "out" / "astronaut.spz"
    (tmp_path / "x.splat").write_bytes(b"precious")
    result = mlsharp("convert", str(source), "x.splat", cwd=tmp_path)
    assert result.returncode == 6 and "--overwrite" in one_error_line(result)
    assert (tmp_path / "x.splat").read_bytes() == b"precious"
    result = mlsharp("convert", str(source), "x.splat", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "x.splat").stat().st_size == 32 * TINY_GAUSSIANS
    result = mlsharp("convert", str(source), "x.depth.png", cwd=tmp_path)
    assert result.returncode == 2 and "prediction" in one_error_line(result)
    assert not (tmp_path / "x.depth.png").exists()


@pytest.fixture()
def small_ply(tmp_path: Path) -> Path:
    """A reference-layout .ply of a small scene (no prediction needed)."""
    from tests.render.test_render_output import marker_scene

    return splat.write(marker_scene(), tmp_path / "scene.ply")


def limited_file_size(max_bytes: int):
    """preexec_fn: files larger than ``max_bytes`` cannot be written (EFBIG, "File too
    large"; Python ignores SIGXFSZ), to fail a write after every check before it passed."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


@pytest.mark.parametrize(
    ("out", "words"),
    [
        ("/sys/y.spz", ["/sys/y.spz", "ermission denied"]),  # PermissionError (also as root)
        ("/proc/y.spz", ["/proc/y.spz"]),  # a pseudo-file system: nothing can be created
        ("a_file/y.spz", ["a_file is not a folder"]),  # FileExistsError before the fix
        ("no/such/folder/y.spz", ["no/such/folder does not exist"]),
    ],
)
def test_convert_output_that_cannot_be_written_is_one_line(
    small_ply: Path, tmp_path: Path, out: str, words: list
) -> None:
    (tmp_path / "a_file").write_bytes(b"x")
    result = mlsharp("convert", str(small_ply), out, cwd=tmp_path)
    assert result.returncode == 1
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert not (tmp_path / "no").exists()  # no folders invented for a mistyped path


def test_convert_onto_a_folder_and_a_failing_write_are_one_line(
    small_ply: Path, tmp_path: Path
) -> None:
    (tmp_path / "taken.spz").mkdir()
    result = mlsharp("convert", str(small_ply), "taken.spz", "--overwrite", cwd=tmp_path)
    assert result.returncode == 1 and "taken.spz: it is a folder" in one_error_line(result)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    result = subprocess.run(
        [sys.executable, "-m", "mlsharp", "convert", str(small_ply), "big.ply"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=limited_file_size(4096),
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot write big.ply: File too large" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.ply", "taken.spz"]  # no temp


def test_convert_refuses_a_frame_the_reference_ply_cannot_take(
    small_ply: Path, tmp_path: Path
) -> None:
    result = mlsharp("convert", str(small_ply), "x.ply", "--frame", "opengl", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "--frame opengl" in line and ".standard.ply" in line
    result = mlsharp("convert", str(small_ply), "y.spz", "--input-frame", "opengl", cwd=tmp_path)
    assert result.returncode == 2 and "reference layout" in one_error_line(result)
    assert not (tmp_path / "x.ply").exists() and not (tmp_path / "y.spz").exists()
    result = mlsharp("convert", str(small_ply), "x.ply", "--frame", "opencv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # what the reference layout is anyway


def test_convert_reads_a_plain_3dgs_ply_by_its_layout(predicted: Path, tmp_path: Path) -> None:
    source = predicted / "out" / "astronaut.ply"
    reference = splat.read(source)
    # A y-up viewer-safe file renamed to .ply (as another tool would name it).
    result = mlsharp("convert", str(source), "up.standard.ply", "--frame", "opengl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "up.standard.ply").rename(tmp_path / "up.ply")
    result = mlsharp("convert", "up.ply", "back.ply", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    back = PlyData.read(str(tmp_path / "back.ply"))
    original = PlyData.read(str(source))
    for name in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"):  # upright, colours kept
        np.testing.assert_allclose(
            back["vertex"][name], original["vertex"][name], rtol=1e-4, atol=2e-4
        )
    assert splat.read(tmp_path / "back.ply").focal_px == pytest.approx(reference.focal_px)


def test_predict_new_formats_with_fewer_splats(tmp_path: Path, tiny_checkpoint) -> None:
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    result = mlsharp(
        "predict", "a.jpg", "-o", "out", "--format", "glb,sog,spz", "--spz-version", "4",
        "--max-splats", "5000", *tiny(tiny_checkpoint), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for name in ("a.glb", "a.sog", "a.spz"):
        assert splat.count(out / name) == 5000, name
        size = (out / name).stat().st_size
        shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
        assert f"out/{name} ({shown})" in result.stderr, result.stderr
    assert f"5,000 of {TINY_GAUSSIANS:,} Gaussians" in result.stderr
    assert (out / "a.spz").read_bytes()[:8] == struct.pack("<4sI", b"NGSP", 4)


def test_convert_and_render_read_every_scene_format(tmp_path: Path) -> None:
    from tests.test_formats import random_scene

    scene = random_scene(400)
    scene.image_size, scene.focal_px = (64, 48), 60.0
    scenes = [f for f in splat.FORMATS if f not in splat.DEPTH_FORMATS]
    for fmt in scenes:
        splat.write(scene, tmp_path / f"src{splat.SUFFIXES[fmt]}", fmt)
    from mlsharp.commands.convert import convert

    for source in scenes:
        for target in scenes:
            dest = tmp_path / f"{source}-to{splat.SUFFIXES[target]}"
            convert(tmp_path / f"src{splat.SUFFIXES[source]}", dest)
            assert splat.count(dest) == 400, (source, target)
    result = mlsharp(
        "convert", "src.glb", "thin.sog", "--max-splats", "100", "--min-opacity", "0.2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "100 splats" in result.stderr and splat.count(tmp_path / "thin.sog") == 100
    refused = mlsharp("convert", "src.sog", "x.glb", "--frame", "opencv", cwd=tmp_path)
    assert refused.returncode == 2 and "always in the opengl frame" in one_error_line(refused)
    for fmt in ("sog", "glb"):
        rendered = mlsharp(
            "render", f"src{splat.SUFFIXES[fmt]}", "-o", f"{fmt}.png", "--size", "32x24",
            "--device", "cpu", "-q", cwd=tmp_path,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        with Image.open(tmp_path / f"{fmt}.png") as image:
            assert image.size == (32, 24)
