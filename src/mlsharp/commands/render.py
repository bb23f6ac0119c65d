"""``mlsharp render SCENE -o OUT.mp4|OUT.png``: a trajectory video or one still of a scene."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from mlsharp.errors import ConfigError, OutputExists

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


def run_render(args: argparse.Namespace) -> int:
    """Run the ``render`` command; returns the exit status."""
    _prefer_passive_openmp_waits()
    from tqdm import tqdm

    from mlsharp import splat
    from mlsharp.render import make_trajectory, output_size, render_frames, write_mp4, write_png

    dest = Path(args.output)
    suffix = dest.suffix.lower()
    if suffix not in (".mp4", ".png"):
        raise ConfigError(f"cannot tell what to write from {dest.name!r}: use .mp4 or .png")
    frames = _plan_frames(suffix, args.frames)
    if args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    requested = parse_size(args.size) if args.size else (None, None)
    if dest.exists() and not args.overwrite:
        raise OutputExists(f"{dest} exists (use --overwrite to replace it)")
    scene_path = Path(args.scene)
    if not scene_path.is_file():
        raise ConfigError(f"scene {scene_path}: no such file")
    try:
        gaussians = splat.read(scene_path)
    except OSError as error:
        raise ConfigError(f"cannot read scene {scene_path}: {error.strerror or error}") from None

    size = output_size(gaussians.image_size, *requested, even=suffix == ".mp4")
    cameras = make_trajectory(gaussians, args.trajectory, frames, size)
    images = render_frames(
        gaussians, cameras, backend=args.backend, device=args.device, background=args.background
    )
    start = time.perf_counter()
    bar = tqdm(
        images, total=frames, desc="render", unit="frame", file=sys.stderr, disable=args.quiet
    )
    if suffix == ".png":
        write_png(next(iter(bar)), dest)
    else:
        write_mp4(bar, dest, size, fps=args.fps)
    bar.close()
    elapsed = time.perf_counter() - start
    what = "still" if suffix == ".png" else f"{frames} frames, {args.trajectory}, {args.fps:g} fps"
    print(
        f"{scene_path} -> {dest} ({len(gaussians):,} splats, {size[0]}x{size[1]}, {what}; "
        f"{elapsed / frames:.2f} s/frame)",
        file=sys.stderr,
    )
    return 0
