"""The ``mlsharp`` command line, run as a user runs it (subprocess, tiny preset)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from mlsharp.model import preset
from tests.conftest import PARITY

ASTRONAUT = PARITY / "images" / "astronaut.jpg"
TINY_GAUSSIANS = preset("tiny").num_gaussians


def tiny(checkpoint: Path) -> list[str]:
    """Options that run the tiny preset on the CPU with the given checkpoint."""
    return ["--checkpoint", str(checkpoint), "--preset", "tiny", "--device", "cpu"]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error" in line or "failed" in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["predict", "--help"], ["serve", "--help"]]
)
def test_help_and_version_do_not_import_torch(args):
    code = (
        "import sys; from mlsharp.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "for heavy in ('torch', 'mlsharp.model', 'fastapi', 'uvicorn', 'pydantic'):\n"
        "    assert heavy not in sys.modules, heavy + ' was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mlsharp" in result.stdout


def test_import_mlsharp_is_light():
    code = (
        "import sys, mlsharp, mlsharp.errors, mlsharp.gaussians; assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_predict_writes_reference_layout_ply(run_cli, tmp_path, tiny_checkpoint):
    image = tmp_path / "astronaut.jpg"
    shutil.copy(ASTRONAUT, image)
    result = run_cli(
        "predict",
        str(image),
        "-o",
        "out",
        *tiny(tiny_checkpoint),
    )
    assert result.returncode == 0, result.stderr
    assert "inference" in result.stderr and "write" in result.stderr  # per-image timing line
    ply = PlyData.read(tmp_path / "out" / "astronaut.ply")
    assert [e.name for e in ply.elements] == [
        "vertex",
        "extrinsic",
        "intrinsic",
        "image_size",
        "frame",
        "disparity",
        "color_space",
        "version",
    ]
    assert ply["vertex"].count == TINY_GAUSSIANS
    assert list(ply["image_size"]["image_size"]) == [512, 512]
    assert ply["intrinsic"]["intrinsic"][0] == pytest.approx(836.7621765895851, rel=1e-6)
    for name in ("x", "y", "z", "opacity", "scale_0", "rot_0", "f_dc_0"):
        assert np.isfinite(ply["vertex"][name]).all()
    assert (ply["vertex"]["z"] > 0).all()


def test_settings_from_environment_and_focal_override(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    env = {
        "MLSHARP_CHECKPOINT": str(tiny_checkpoint),
        "MLSHARP_PRESET": "tiny",
        "MLSHARP_DEVICE": "cpu",
    }
    result = run_cli("predict", "a.jpg", "-o", "out", "--focal-mm", "24", "-q", env=env)
    assert result.returncode == 0, result.stderr
    ply = PlyData.read(tmp_path / "out" / "a.ply")
    expected = 24 * np.sqrt(512**2 * 2) / np.sqrt(36**2 + 24**2)
    assert ply["intrinsic"]["intrinsic"][0] == pytest.approx(expected, rel=1e-6)


def test_bad_files_are_reported_in_one_line_and_skipped(run_cli, tmp_path, tiny_checkpoint):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(ASTRONAUT, photos / "nested" / "good.jpg")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photos / "small.png")
    (photos / "broken.jpg").write_text("this is not a photo")
    (photos / "notes.txt").write_text("ignored: not an image extension")
    result = run_cli(
        "predict",
        "photos",
        "missing.jpg",
        "-o",
        "out",
        *tiny(tiny_checkpoint),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "nested" / "good.ply").exists()
    assert (tmp_path / "out" / "small.ply").exists()
    assert not (tmp_path / "out" / "broken.ply").exists()
    broken = [line for line in result.stderr.splitlines() if "broken.jpg" in line]
    assert len(broken) == 1 and "cannot read" in broken[0]
    assert any(
        "missing.jpg" in line and "no such file" in line for line in result.stderr.splitlines()
    )
    assert "notes" not in result.stderr


def test_existing_output_is_not_clobbered(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.ply").write_bytes(b"precious")
    args = [
        "predict",
        "a.jpg",
        "-o",
        "out",
        *tiny(tiny_checkpoint),
    ]
    result = run_cli(*args)
    assert result.returncode == 1
    assert "--overwrite" in result.stderr
    assert (out / "a.ply").read_bytes() == b"precious"
    result = run_cli(*args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "a.ply").read_bytes().startswith(b"ply\n")


def test_missing_checkpoint_is_one_line(run_cli, tmp_path):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    result = run_cli("predict", "a.jpg", "-o", "out", "--checkpoint", "nope.pt", "--device", "cpu")
    assert result.returncode == 4
    assert "nope.pt" in _one_error_line(result.stderr)


def test_checkpoint_of_another_preset_names_the_mismatch(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    # The last --preset wins: a tiny checkpoint offered to the sharp network.
    result = run_cli("predict", "a.jpg", "-o", "out", *tiny(tiny_checkpoint), "--preset", "sharp")
    assert result.returncode == 4
    line = _one_error_line(result.stderr)
    assert "shape mismatch" in line and "sharp" in line


def test_foreign_checkpoint_file_is_one_line(run_cli, tmp_path):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    (tmp_path / "fake.pt").write_text("not a checkpoint")
    result = run_cli("predict", "a.jpg", "-o", "out", "--checkpoint", "fake.pt", "--device", "cpu")
    assert result.returncode == 4
    assert "fake.pt" in _one_error_line(result.stderr)


def test_offline_without_weights_says_how_to_get_them(run_cli, tmp_path):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"MLSHARP_CHECKPOINT_URL": f"http://127.0.0.1:{port}/sharp.pt"}
    result = run_cli("predict", "a.jpg", "-o", "out", "--device", "cpu", "-q", env=env)
    assert result.returncode == 4
    line = _one_error_line(result.stderr)
    assert "mlsharp download" in line and "--checkpoint" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_unavailable_device_is_one_line(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    result = run_cli("predict", "a.jpg", "-o", "out", *tiny(tiny_checkpoint), "--device", "cuda")
    assert result.returncode == 5
    assert "cuda" in _one_error_line(result.stderr)


def test_invalid_focal_is_rejected(run_cli, tmp_path, tiny_checkpoint):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    result = run_cli("predict", "a.jpg", "-o", "out", "--focal-mm", "-3", *tiny(tiny_checkpoint))
    assert result.returncode == 2
    assert "focal" in _one_error_line(result.stderr)


def test_absurd_focal_is_one_line(run_cli, tmp_path, tiny_checkpoint):
    """1e-300 passed the old check (> 0) and made the output non-finite."""
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "a.png")
    result = run_cli(
        "predict", "a.png", "-o", "out", "--focal-mm", "1e-300", *tiny(tiny_checkpoint)
    )
    assert result.returncode == 2
    assert "from 1 to 10000 mm" in _one_error_line(result.stderr)


def test_non_finite_prediction_is_one_line_and_writes_nothing(run_cli, tmp_path, tiny_checkpoint):
    """Weights that make the network predict NaN: one ``failed`` line, exit 1, no file
    (the NaN scene was written and reported as done)."""
    from tests.service.test_bad_photos import nan_checkpoint

    broken = nan_checkpoint(tiny_checkpoint, tmp_path / "nan.pt")
    Image.new("RGB", (40, 30), (90, 10, 10)).save(tmp_path / "a.png")
    result = run_cli("predict", "a.png", "-o", "out", *tiny(broken))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1, result.stderr
    assert failed[0].startswith("failed a.png: the prediction holds NaN or infinite values")
    assert not list((tmp_path / "out").glob("*.ply"))


def test_output_names_from_hostile_file_names(run_cli, tmp_path, tiny_checkpoint):
    """A newline in a file name and a 244-byte CJK name: outputs are named safely and
    within file-name limits (the long one failed: its .standard.ply name was too long)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (10, 90, 10)).save(photos / "line\nbreak.png")
    long_name = "写" * 80 + ".png"
    Image.new("RGB", (40, 30), (10, 10, 90)).save(photos / long_name)
    result = run_cli(
        "predict", "photos", "-o", "out", "--format", "ply-standard", *tiny(tiny_checkpoint)
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    stem = "写" * 41  # 123 bytes: the longest whole-character stem within 128 with ".png"
    assert names == ["linebreak.standard.ply", f"{stem}.standard.ply"]


def test_random_checkpoint_loads_strictly(run_cli, tmp_path):
    result = run_cli("random-checkpoint", "--preset", "tiny", "-o", "r.pt", "--seed", "3")
    assert result.returncode == 0, result.stderr
    from mlsharp.model import build_model

    state = torch.load(tmp_path / "r.pt", weights_only=True)
    build_model("tiny").load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["bogus"], ["invalid choice: 'bogus'", "`mlsharp --help`"]),
        (["predict", "a.jpg"], ["required: -o/--output", "`mlsharp predict --help`"]),
        (["predict", "a.jpg", "-o", "o", "--precision", "fp64"], ["--precision", "'fp64'"]),
        (["render", "s.ply", "-o", "v.mp4", "--backend", "vulkan"], ["--backend", "'vulkan'"]),
        (["render", "s.ply", "-o", "v.mp4", "--fov", "wide"], ["--fov", "'wide'"]),
        (["convert", "a.ply"], ["required: OUT", "`mlsharp convert --help`"]),
        (["convert", "a.ply", "b.spz", "--frame", "up"], ["--frame", "'up'"]),
        (["serve", "--port", "http"], ["--port", "'http'", "`mlsharp serve --help`"]),
        (["doctor", "--jsn"], ["unrecognized arguments: --jsn"]),
        (["config", "show", "--nope"], ["unrecognized arguments: --nope"]),
    ],
)
def test_usage_errors_are_one_line_without_the_usage_block(args, words, capsys):
    from mlsharp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlsharp: error: "), captured.err
    assert "usage:" not in captured.err and captured.out == ""
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("outdir", ["/proc/out", "/sys/out", "a_file/out"])
def test_predict_output_folder_that_cannot_be_made_fails_before_loading(run_cli, tmp_path, outdir):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    (tmp_path / "a_file").write_bytes(b"x")
    # No checkpoint exists: the output folder is checked (and created) before the model loads.
    result = run_cli("predict", "a.jpg", "-o", outdir, "--checkpoint", "nope.pt", "-q")
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert f"cannot create the output folder {outdir}" in line, line


def test_a_closed_stdout_ends_quietly(tmp_path):
    # `mlsharp config show | head -0`: the reader is gone before anything is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mlsharp", "config", "show"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141  # 128 + SIGPIPE, what a shell shows for `cmd | head`
    assert result.stderr == ""  # no BrokenPipeError traceback
