"""Reading screenshots of the viewer: how much of it shows splats, and where colours are."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def canvas_pixels(page: Any, save_to: Path | None = None) -> np.ndarray:
    """Screenshot of the viewer's canvas as an (H, W, 3) uint8 array (saved if asked)."""
    png = page.locator("#viewer canvas").screenshot()
    if save_to is not None:
        save_to.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def non_background_fraction(
    pixels: np.ndarray, background: tuple[int, int, int], tolerance: int = 24
) -> float:
    """Share of pixels farther than ``tolerance`` (max channel difference) from the background."""
    difference = np.abs(pixels.astype(np.int16) - np.array(background, dtype=np.int16))
    return float((difference.max(axis=-1) > tolerance).mean())


def dominant_mask(pixels: np.ndarray, channel: int, margin: int = 60) -> np.ndarray:
    """Pixels where ``channel`` (0 red, 2 blue) exceeds both others by ``margin``."""
    values = pixels.astype(np.int16)
    others = [c for c in range(3) if c != channel]
    return (values[..., channel] - values[..., others].max(axis=-1)) > margin


def centroid_row(mask: np.ndarray) -> float | None:
    """Mean row (0 = top, 1 = bottom) of the mask's pixels, or ``None`` if empty."""
    rows = np.nonzero(mask)[0]
    if rows.size == 0:
        return None
    return float(rows.mean() / mask.shape[0])


def centroid_column(mask: np.ndarray) -> float | None:
    """Mean column (0 = left, 1 = right) of the mask's pixels, or ``None`` if empty."""
    columns = np.nonzero(mask)[1]
    if columns.size == 0:
        return None
    return float(columns.mean() / mask.shape[1])


def border_matches(
    pixels: np.ndarray, color: tuple[int, int, int], width: int = 4, corner: int = 12
) -> float:
    """Share of the outermost ``width`` pixels on the four sides that are ``color`` (+-8),
    leaving out ``corner`` pixels at each end of a side (rounded, clipped corners).

    A 3 px ring inside an element whose screenshot box was rounded outwards by a pixel
    fills 3 of the outer 4 lines: about 0.75."""
    h, w = pixels.shape[:2]
    sides = [
        pixels[:width, corner : w - corner],
        pixels[h - width :, corner : w - corner],
        pixels[corner : h - corner, :width],
        pixels[corner : h - corner, w - width :],
    ]
    border = np.concatenate([side.reshape(-1, 3) for side in sides]).astype(np.int16)
    return float((np.abs(border - np.array(color)).max(axis=1) <= 8).mean())
