"""Writing renderings: MP4 (H.264 through imageio-ffmpeg's bundled ffmpeg) and PNG.

Both writes are atomic: the data goes to a temporary file next to the destination that
is renamed over it only once complete (:func:`mlsharp._atomic.atomic_path`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

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

    Returns:
        The number of frames written.

    Raises:
        ConfigError: odd width/height, a frame of another size, or no frames.
    """
    import imageio_ffmpeg

    width, height = size
    if width % 2 or height % 2:
        raise ConfigError(f"MP4 (H.264, yuv420p) needs even sides, got {width}x{height}")
    count = 0
    with atomic_path(dest) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,  # the CRF below instead of imageio-ffmpeg's 0-10 scale
            macro_block_size=1,  # sizes are already even; never let it rescale
            output_params=["-crf", str(crf), "-movflags", "+faststart", "-f", "mp4"],
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                if frame.shape != (height, width, 3):
                    raise ConfigError(
                        f"frame of shape {frame.shape} does not match the video's {width}x{height}"
                    )
                writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
                count += 1
        finally:
            writer.close()
        if count == 0:
            raise ConfigError("no frames to write")
    return count
