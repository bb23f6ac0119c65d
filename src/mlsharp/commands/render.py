"""``mlsharp render SCENE -o OUT.mp4|OUT.png``: a trajectory video or one still of a scene."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlsharp.commands.output import check_output_file, describe, writing
from mlsharp.errors import ConfigError

if TYPE_CHECKING:
    from mlsharp.gaussians import Gaussians
    from mlsharp.render.trajectory import TrajectoryKind

#: Frames of a video when ``--frames`` is not given (the reference's 60 steps).
DEFAULT_VIDEO_FRAMES = 60
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``.

    Raises:
        ConfigError: not two positive integers joined by ``x``.
    """
    match = _SIZE.match(text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ConfigError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 768x576")
    return int(match[1]), int(match[2])


def _plan_frames(suffix: str, frames: int | None) -> int:
    if frames is not None and frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    if suffix == ".png":
        if frames not in (None, 1):
            raise ConfigError("a .png output is one still: use --frames 1 or write a .mp4")
        return 1
    return DEFAULT_VIDEO_FRAMES if frames is None else frames


def _prefer_passive_openmp_waits() -> None:
    """Let idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    The CPU rasterizer runs thousands of short parallel regions per frame. With the
    default (spinning) wait policy, a machine whose cores are busy with other processes
    made frames 5-10x slower (a spinning thread holds a core its partner needs); passive
    waits cost little when the machine is idle. libgomp reads this when torch loads, so
    it only takes effect if torch is not imported yet (true for the CLI).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _read_scene(path: Path, input_frame: str | None) -> Gaussians:
    """The scene at ``path`` in the model's frame (one-line errors for unreadable files)."""
    from mlsharp import splat

    if not path.is_file():
        raise ConfigError(f"scene {path}: no such file")
    try:
        # argparse limits --input-frame to the frames splat.read accepts
        return splat.read(path, frame=input_frame)  # type: ignore[arg-type]
    except OSError as error:
        raise ConfigError(f"cannot read scene {path}: {describe(error)}") from None


def check_fov(fov_degrees: float) -> None:
    """Raise :class:`ConfigError` unless ``fov_degrees`` is in (0, 180)."""
    if not 0 < fov_degrees < 180:
        raise ConfigError(f"--fov must be between 0 and 180 degrees, got {fov_degrees:g}")


def apply_fov(gaussians: Gaussians, fov_degrees: float, size: tuple[int, int]) -> None:
    """Set the scene's focal length so a rendering of ``size`` spans ``fov_degrees``
    horizontally (for files without camera data: .splat, .spz, third-party .ply).

    Raises:
        ConfigError: the angle is not in (0, 180).
    """
    check_fov(fov_degrees)
    width, height = size
    photo_w, photo_h = gaussians.image_size
    focal_out = width / (2.0 * math.tan(math.radians(fov_degrees) / 2.0))
    # The renderer scales the photo's focal length by max(w/W, h/H) (camera.photo_intrinsics).
    gaussians.focal_px = focal_out / max(width / photo_w, height / photo_h)


def default_trajectory(gaussians: Gaussians) -> TrajectoryKind:
    """``turn`` for a 360° panorama scene (its file says so), else ``orbit``."""
    return "turn" if gaussians.metadata.get("panorama") else "orbit"


def _warn(message: str) -> None:
    print(f"mlsharp: warning: {message}", file=sys.stderr)


_FRAME_HINT = "if the file is stored y-up (opengl), try --input-frame opengl"


def _nothing_in_front(gaussians: Gaussians) -> bool:
    """True when no splat centre lies in front of the photo's camera (z > 0)."""
    z = np.asarray(gaussians.positions[:, 2], dtype=np.float64)
    return not bool(np.any(np.isfinite(z) & (z > 0)))


class _EmptyFrameWatch:
    """Passes images through and remembers whether any showed more than one colour."""

    def __init__(self, images: Iterable[np.ndarray]) -> None:
        self.images = images
        self.any_content = False

    def __iter__(self) -> Iterator[np.ndarray]:
        for image in self.images:
            if not self.any_content and image.size:
                self.any_content = bool((image != image[0, 0]).any())
            yield image


def _checked_output(
    args: argparse.Namespace,
) -> tuple[Path, int, tuple[int | None, int | None]]:
    """Check every option that needs no scene; returns ``(OUT, frames, (width, height))``
    (the size as asked for, ``None`` where it follows the photo)."""
    dest = Path(args.output)
    suffix = dest.suffix.lower()
    if suffix not in (".mp4", ".png"):
        raise ConfigError(f"cannot tell what to write from {dest.name!r}: use .mp4 or .png")
    frames = _plan_frames(suffix, args.frames)
    if args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    requested = parse_size(args.size) if args.size else (None, None)
    if getattr(args, "fov", None) is not None:
        check_fov(args.fov)
    check_output_file(dest, overwrite=args.overwrite)
    return dest, frames, requested


def _write(
    images: Iterable[np.ndarray],
    dest: Path,
    size: tuple[int, int],
    frames: int,
    args: argparse.Namespace,
) -> float:
    """Write the frames to ``dest`` (PNG: the first) with a progress bar; returns seconds."""
    from tqdm import tqdm

    from mlsharp.render import write_mp4, write_png

    start = time.perf_counter()
    bar = tqdm(
        images, total=frames, desc="render", unit="frame", file=sys.stderr, disable=args.quiet
    )
    with writing(dest):
        if dest.suffix.lower() == ".png":
            write_png(next(iter(bar)), dest)
        else:
            write_mp4(bar, dest, size, fps=args.fps)
    bar.close()
    return time.perf_counter() - start


def run_render(args: argparse.Namespace) -> int:
    """Run the ``render`` command; returns the exit status."""
    _prefer_passive_openmp_waits()
    from mlsharp.render import make_trajectory, output_size, render_frames

    dest, frames, requested = _checked_output(args)
    scene_path = Path(args.scene)
    gaussians = _read_scene(scene_path, getattr(args, "input_frame", None))
    size = output_size(gaussians.image_size, *requested, even=dest.suffix.lower() == ".mp4")
    if getattr(args, "fov", None) is not None:
        apply_fov(gaussians, args.fov, size)
    empty_scene = _nothing_in_front(gaussians)
    if empty_scene:
        _warn(f"no splat of {scene_path} lies in front of the camera; {_FRAME_HINT}")
    trajectory: TrajectoryKind = args.trajectory or default_trajectory(gaussians)
    cameras = make_trajectory(gaussians, trajectory, frames, size)
    images = _EmptyFrameWatch(
        render_frames(
            gaussians,
            cameras,
            backend=args.backend,
            device=args.device,
            background=args.background,
            on_warning=_warn,
        )
    )
    elapsed = _write(images, dest, size, frames, args)
    if dest.suffix.lower() == ".png":
        what = "still"
    else:
        what = f"{frames} frames, {trajectory}, {args.fps:g} fps"
    print(
        f"{scene_path} -> {dest} ({len(gaussians):,} splats, {size[0]}x{size[1]}, {what}; "
        f"{elapsed / frames:.2f} s/frame)",
        file=sys.stderr,
    )
    if not images.any_content and not empty_scene:
        _warn(f"every frame is a single colour: nothing of the scene is in view; {_FRAME_HINT}")
    return 0
