"""``mlsharp render`` run as a user runs it (subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from mlsharp import cli
from mlsharp.render import BACKENDS, TRAJECTORIES
from mlsharp.splat import write
from tests.conftest import PARITY
from tests.render.test_render_output import marker_scene

ASTRONAUT = PARITY / "images" / "astronaut.jpg"


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlsharp: error: "), lines[0]
    return lines[0]


@pytest.fixture()
def main_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``mlsharp.cli.main`` in-process in ``tmp_path`` (no torch import per call, so
    the many error cases stay fast); returns a CompletedProcess-like result."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


@pytest.fixture()
def marker_ply(tmp_path: Path) -> Path:
    return write(marker_scene(), tmp_path / "marker.ply")


def test_cli_choices_mirror_the_library():
    assert cli.RENDER_TRAJECTORIES == TRAJECTORIES
    assert cli.RENDER_BACKENDS == BACKENDS


def test_importing_the_render_package_does_not_import_torch():
    code = "import sys, mlsharp.render; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_render_help_does_not_import_torch():
    code = (
        "import sys; from mlsharp.cli import main\n"
        "try:\n    main(['render', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--trajectory" in result.stdout


def test_png_still_from_the_photo_viewpoint_is_upright(run_cli, marker_ply, tmp_path):
    result = run_cli("render", str(marker_ply), "-o", "still.png", "--size", "160x120", "-q")
    assert result.returncode == 0, result.stderr
    assert "still" in result.stderr and "s/frame" in result.stderr
    image = np.asarray(Image.open(tmp_path / "still.png"))
    assert image.shape == (120, 160, 3)
    rows, cols = np.nonzero((image > 200).all(-1))
    assert rows.size and rows.mean() < 50 and abs(cols.mean() - 80) < 20


def test_mp4_with_default_size_keeps_the_photo_aspect_and_even_sides(run_cli, marker_ply, tmp_path):
    g = marker_scene()
    g.image_size = (321, 241)  # odd: the video must round up to even sides
    scene = write(g, tmp_path / "odd.ply")
    result = run_cli(
        "render", str(scene), "-o", "v.mp4", "--frames", "4", "--trajectory", "dolly", "--fps", "8"
    )
    assert result.returncode == 0, result.stderr
    assert "render" in result.stderr  # the progress bar (stderr)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (322, 242)
    assert sum(1 for _ in reader) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "v.mp4", "--size", "12by5"], "--size"),
        (["-o", "v.mp4", "--size", "0x10"], "--size"),
        (["-o", "v.mp4", "--size", "10x99999"], "height"),
        (["-o", "v.gif"], ".mp4 or .png"),
        (["-o", "v.mp4", "--frames", "0"], "--frames"),
        (["-o", "v.png", "--frames", "5"], "one still"),
        (["-o", "v.mp4", "--fps", "0"], "--fps"),
        (["-o", "v.mp4", "--background", "mauve"], "background"),
        (["-o", "v.mp4", "--backend", "gsplat", "--device", "cpu"], "CUDA"),
    ],
)
def test_bad_options_are_one_line_errors(main_in, marker_ply, tmp_path, args, message):
    line = one_error_line(main_in("render", str(marker_ply), *args, "-q"))
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["marker.ply"]


def test_unreadable_scenes_are_one_line_errors(main_in, tmp_path):
    assert "no such file" in one_error_line(main_in("render", "missing.ply", "-o", "v.mp4"))
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    result = main_in("render", "junk.ply", "-o", "v.mp4")
    assert "junk.ply" in one_error_line(result)
    (tmp_path / "scene.xyz").write_bytes(b"x")
    assert "suffix" in one_error_line(main_in("render", "scene.xyz", "-o", "v.mp4"))
    assert not (tmp_path / "v.mp4").exists()


def test_existing_output_needs_overwrite(main_in, marker_ply, tmp_path):
    (tmp_path / "v.png").write_bytes(b"keep me")
    assert "--overwrite" in one_error_line(main_in("render", str(marker_ply), "-o", "v.png"))
    assert (tmp_path / "v.png").read_bytes() == b"keep me"
    args = ("render", str(marker_ply), "-o", "v.png", "--size", "32x24", "--overwrite", "-q")
    assert main_in(*args).returncode == 0
    assert Image.open(tmp_path / "v.png").size == (32, 24)


def test_predict_then_render_with_the_tiny_model(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "astronaut.jpg")
    model = ["--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--device", "cpu"]
    result = run_cli("predict", "astronaut.jpg", "-o", "out", *model, "-q")
    assert result.returncode == 0, result.stderr
    scene = str(tmp_path / "out" / "astronaut.ply")
    args = ["--size", "64x48", "--device", "cpu", "-q"]
    result = run_cli("render", scene, "-o", "orbit.mp4", "--frames", "3", *args)
    assert result.returncode == 0, result.stderr
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "orbit.mp4"))
    assert tuple(next(reader)["size"]) == (64, 48)
    frames = [np.frombuffer(f, np.uint8) for f in reader]
    assert len(frames) == 3 and all(f.max() > 0 for f in frames)
    result = run_cli("render", scene, "-o", "still.png", "--frames", "1", *args)
    assert result.returncode == 0, result.stderr
    still = np.asarray(Image.open(tmp_path / "still.png"))
    assert still.shape == (48, 64, 3) and still.std() > 0
