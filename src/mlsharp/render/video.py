"""Writing renderings: MP4 (H.264 through imageio-ffmpeg's bundled ffmpeg) and PNG.

Both writes are atomic: the data goes to a temporary file next to the destination that
is renamed over it only once complete (:func:`mlsharp._atomic.atomic_path`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlsharp._atomic import atomic_path, atomic_write
from mlsharp.errors import ConfigError

#: Output suffixes ``mlsharp render`` understands.
VIDEO_SUFFIXES = (".mp4",)
IMAGE_SUFFIXES = (".png",)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(image: np.ndarray, dest: str | os.PathLike[str]) -> Path:
    """Write an (H, W, 3) uint8 image to ``dest`` as PNG, atomically."""
    return atomic_write(dest, [encode_png(image)])


def _ffmpeg_command(tmp: Path, size: tuple[int, int], fps: float, crf: int) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin and writing H.264 (yuv420p) MP4 to ``tmp``."""
    import imageio_ffmpeg

    width, height = size
    rate = str(Fraction(fps).limit_denominator())  # 24000/1001 stays exact
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-y", "-nostdin", "-loglevel", "error"),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", rate),
        *("-i", "-", "-an"),
        *("-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf)),
        *("-movflags", "+faststart", "-f", "mp4", str(tmp)),
    ]


def _ffmpeg_failure(log: BinaryIO, status: int) -> str:
    """Why ffmpeg failed: the last line it logged, else how it ended."""
    log.seek(0)
    lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), None)
    if last is not None:
        return last
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def write_mp4(
    frames: Iterable[np.ndarray],
    dest: str | os.PathLike[str],
    size: tuple[int, int],
    *,
    fps: float = 30.0,
    crf: int = 20,
) -> int:
    """Encode (H, W, 3) uint8 frames of ``size`` = (width, height) to an H.264 MP4.

    The pixel format is yuv420p (what browsers and players accept), which needs even
    sides. ``crf`` is x264's constant rate factor (lower is better; 18-23 look good). The
    file is written atomically (a temporary file next to ``dest``, renamed when complete).
    ffmpeg (imageio-ffmpeg's bundled binary) runs with its messages captured, so a failure
    is one exception carrying ffmpeg's own error line, not noise on the terminal.

    Returns:
        The number of frames written.

    Raises:
        ConfigError: odd width/height, a frame of another size, or no frames.
        OSError: the file cannot be written or ffmpeg failed (its error in the message).
    """
    width, height = size
    if width % 2 or height % 2:
        raise ConfigError(f"MP4 (H.264, yuv420p) needs even sides, got {width}x{height}")
    count = 0
    with atomic_path(dest) as tmp, tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            _ffmpeg_command(tmp, size, fps, crf),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        assert process.stdin is not None
        try:
            for frame in frames:
                if frame.shape != (height, width, 3):
                    raise ConfigError(
                        f"frame of shape {frame.shape} does not match the video's {width}x{height}"
                    )
                try:
                    process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
                except BrokenPipeError:
                    break  # ffmpeg has quit; its exit status and message say why
                count += 1
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            status = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if status != 0:
            raise OSError(errno.EIO, f"ffmpeg failed ({_ffmpeg_failure(log, status)})", str(dest))
        if count == 0:
            raise ConfigError("no frames to write")
    return count
