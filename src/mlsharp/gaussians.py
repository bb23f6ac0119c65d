"""The ``Gaussians`` container: what the engine returns and every writer consumes.

It holds plain NumPy arrays on the host, so writers (``mlsharp.splat``) never import torch.
Coordinates follow the reference (OpenCV camera convention): +x right, +y down, +z forward,
camera at the origin, metric units of the monodepth network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mlsharp.errors import NonFiniteOutput

ColorSpace = Literal["linearRGB", "sRGB"]


@dataclass
class Gaussians:
    """A set of N 3D Gaussians for one image, in metric camera space.

    Attributes:
        positions: (N, 3) float32 centres.
        scales: (N, 3) float32 standard deviations along the principal axes (linear, not
            log), sorted descending per Gaussian.
        rotations: (N, 4) float32 unit quaternions (w, x, y, z) whose rotation matrix has
            the principal axes as columns.
        colors: (N, 3) float32 colours in ``color_space`` (the network predicts linear RGB).
        opacities: (N,) float32 opacities in (0, 1).
        focal_px: focal length in pixels of the input image (after EXIF rotation).
        image_size: (width, height) of the input image (after EXIF rotation).
        color_space: the colour space of ``colors``.
        depth: optional (height, width) float32 metric depth map of the photo (same units
            as ``positions``' z), for the depth-map exports; ``None`` when unknown (e.g. a
            scene read back from a file).
        metadata: free-form extras (timings, source name) that writers may ignore.
    """

    positions: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    colors: np.ndarray
    opacities: np.ndarray
    focal_px: float
    image_size: tuple[int, int]
    color_space: ColorSpace = "linearRGB"
    depth: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.positions)
        expected = {
            "positions": (n, 3),
            "scales": (n, 3),
            "rotations": (n, 4),
            "colors": (n, 3),
            "opacities": (n,),
        }
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise ValueError(f"Gaussians.{name} has shape {actual}, expected {shape}")
        if self.depth is not None and self.depth.ndim != 2:
            raise ValueError(f"Gaussians.depth must be 2-D, got shape {self.depth.shape}")

    def __len__(self) -> int:
        return len(self.positions)

    def check_finite(self) -> None:
        """Raise :class:`~mlsharp.errors.NonFiniteOutput` unless every value is finite.

        Writers would put NaN/inf into files that viewers cannot show; front ends call
        this before writing, so such a prediction fails instead of "succeeding".
        """
        bad = np.zeros(len(self), dtype=bool)
        attributes = []
        for name in ("positions", "scales", "rotations", "colors", "opacities"):
            values = getattr(self, name)
            finite = np.isfinite(values)
            rows = ~finite if finite.ndim == 1 else ~finite.all(axis=1)
            if rows.any():
                attributes.append(name)
                bad |= rows
        if attributes:
            raise NonFiniteOutput(
                f"the prediction holds NaN or infinite values ({int(bad.sum()):,} of "
                f"{len(self):,} Gaussians; in {', '.join(attributes)}); nothing was written. "
                "Try fp32 precision, or check the weights"
            )
