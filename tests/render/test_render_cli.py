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


@pytest.mark.parametrize(
    ("out", "extra", "words"),
    [
        ("/proc/r.png", [], ["cannot write /proc/r.png"]),
        ("/proc/r.mp4", ["--frames", "2"], ["cannot write /proc/r.mp4"]),
        ("/sys/r.png", [], ["cannot write /sys/r.png", "ermission denied"]),
        ("a_file/r.png", [], ["a_file is not a folder"]),
        ("missing/r.mp4", [], ["folder missing does not exist"]),
        ("a_dir.png", ["--overwrite"], ["a_dir.png: it is a folder"]),
    ],
)
def test_outputs_that_cannot_be_written_are_one_line(
    run_cli, marker_ply, tmp_path, out, extra, words
):
    # A subprocess, so that anything ffmpeg printed on the terminal would show up here.
    (tmp_path / "a_file").write_bytes(b"x")
    (tmp_path / "a_dir.png").mkdir()
    result = run_cli("render", str(marker_ply), "-o", out, "--size", "32x24", "-q", *extra)
    assert result.returncode == 1
    line = one_error_line(result)
    assert all(word in line for word in words), line
    assert not (tmp_path / "missing").exists()  # no folder invented for a mistyped path


@pytest.mark.parametrize(("out", "reason"), [("big.png", "File too large"), ("big.mp4", "ffmpeg")])
def test_a_write_that_fails_midway_is_one_line(marker_ply, tmp_path, out, reason):
    import resource

    def small_files() -> None:  # EFBIG past 1 KiB (Python ignores SIGXFSZ; ffmpeg dies of it)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = subprocess.run(
        [sys.executable, "-m", "mlsharp", "render", str(marker_ply), "-o", out, "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=small_files,
        timeout=300,
    )
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"cannot write {out}" in line and reason in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.ply"]  # no temporary left


def test_a_y_up_splat_warns_and_renders_with_input_frame(run_cli, tmp_path):
    write(marker_scene(), tmp_path / "up.splat", "splat", frame="opengl")
    args = ["--size", "80x60", "--device", "cpu", "-q"]
    result = run_cli("render", "up.splat", "-o", "behind.png", *args)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--input-frame opengl" in warnings[0]
    assert np.asarray(Image.open(tmp_path / "behind.png")).max() == 0  # all black
    result = run_cli("render", "up.splat", "-o", "upright.png", "--input-frame", "opengl", *args)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    image = np.asarray(Image.open(tmp_path / "upright.png"))
    rows, _ = np.nonzero((image > 200).all(-1))  # the white blob is above the centre
    assert rows.size and rows.mean() < 30


def test_a_scene_out_of_view_warns_that_the_frames_are_empty(main_in, tmp_path):
    g = marker_scene()
    g.positions[:, 0] += 1000.0  # in front of the camera, far to its right
    write(g, tmp_path / "aside.ply")
    result = main_in("render", "aside.ply", "-o", "aside.png", "--size", "32x24", "-q")
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "single colour" in warnings[0], result.stderr


def test_fov_sets_the_camera_of_files_without_one(main_in, tmp_path):
    write(marker_scene(), tmp_path / "m.splat", "splat")  # no camera: 512 px at 640x480

    def red_column(*extra: str) -> float:
        out = f"red{len(extra)}.png"
        result = main_in("render", "m.splat", "-o", out, "--size", "160x120", "-q", *extra)
        assert result.returncode == 0, result.stderr
        image = np.asarray(Image.open(tmp_path / out)).astype(int)
        _, cols = np.nonzero((image[..., 0] > 150) & (image[..., 1] < 80))
        return cols.mean()

    # The red blob sits at x = 1.5, z = 4: f * 1.5 / 4 px right of the centre (80).
    assert red_column() == pytest.approx(80 + 128 * 1.5 / 4, abs=3)  # f = 512 * 160 / 640
    f_50 = 80 / np.tan(np.radians(25))
    assert red_column("--fov", "50") == pytest.approx(80 + f_50 * 1.5 / 4, abs=3)
    line = one_error_line(main_in("render", "m.splat", "-o", "x.png", "--fov", "180"))
    assert "--fov" in line


def test_size_errors_name_the_size_asked_for(main_in, marker_ply):
    line = one_error_line(main_in("render", str(marker_ply), "-o", "v.mp4", "--size", "99999x9"))
    assert "99999" in line and "100000" not in line


@pytest.mark.parametrize("frame", ["opencv", "opengl"])
def test_a_plain_3dgs_ply_renders_upright_with_its_colours(main_in, tmp_path, frame):
    # A viewer-safe file renamed to .ply, as another 3DGS tool would name it.
    write(marker_scene(), tmp_path / "s.standard.ply", "ply-standard", frame=frame)
    (tmp_path / "s.standard.ply").rename(tmp_path / "plain.ply")
    reference = write(marker_scene(), tmp_path / "reference.ply")
    for scene, out in ((reference, "reference.png"), (tmp_path / "plain.ply", "plain.png")):
        result = main_in("render", str(scene), "-o", out, "--size", "160x120", "-q")
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    plain = np.asarray(Image.open(tmp_path / "plain.png")).astype(int)
    expected = np.asarray(Image.open(tmp_path / "reference.png")).astype(int)
    assert np.abs(plain - expected).max() <= 2  # same picture: not washed out, not behind
