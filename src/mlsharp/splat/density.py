"""Fewer splats: keep the most important ones (``--max-splats``) or the opaque ones
(``--min-opacity``). The one function behind ``mlsharp predict``, ``mlsharp convert``, the
API's ``max_splats`` / ``min_opacity`` form fields and the web page's detail control.

Importance of a splat (what ``max_splats`` keeps the most of) is its opacity times the area
it covers in the photo, seen from the photo's camera at the origin::

    importance = opacity * s1 * s2 / d**2

``s1 >= s2`` are its two largest standard deviations and ``d`` its distance from the camera:
a Gaussian's footprint on the image is roughly an ellipse with half-axes ``f * s1 / d`` and
``f * s2 / d`` (the focal length ``f`` is the same for every splat, so it drops out). Large,
opaque, near splats carry the picture; small, faint or far ones add little when left out.

The result is deterministic: ties keep the splat that comes first, the kept splats stay in
their original order (the reference's layer, row, column), and splats with a non-finite
importance (a NaN position or scale) are the first to go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians

__all__ = ["MAX_SPLATS_LIMIT", "Density", "importance", "reduce_density"]

#: The largest ``max_splats`` accepted (anything above keeps every splat of any SHARP scene).
MAX_SPLATS_LIMIT = 2**31 - 1
# Distances below this (a splat at the camera's centre) count as this, not as zero.
_MIN_DISTANCE = 1e-6


@dataclass(frozen=True)
class Density:
    """How many splats to keep: at most ``max_splats``, none below ``min_opacity``.

    ``None`` means no limit. Build it with :meth:`checked` to validate user input.
    """

    max_splats: int | None = None
    min_opacity: float | None = None

    @classmethod
    def checked(cls, max_splats: object = None, min_opacity: object = None) -> Density:
        """A :class:`Density` from user input, checked.

        Raises:
            ConfigError: ``max_splats`` is not a whole number from 1 to 2**31 - 1, or
                ``min_opacity`` is not a number from 0 to 1 (1 excluded).
        """
        if max_splats is not None:
            if isinstance(max_splats, bool) or not isinstance(max_splats, int):
                raise ConfigError(f"max_splats must be a whole number, got {max_splats!r}")
            if not 1 <= max_splats <= MAX_SPLATS_LIMIT:
                raise ConfigError(
                    f"max_splats must be between 1 and {MAX_SPLATS_LIMIT}, got {max_splats}"
                )
        if min_opacity is not None:
            if isinstance(min_opacity, bool) or not isinstance(min_opacity, int | float):
                raise ConfigError(f"min_opacity must be a number, got {min_opacity!r}")
            if not (math.isfinite(min_opacity) and 0.0 <= min_opacity < 1.0):
                raise ConfigError(f"min_opacity must be at least 0 and below 1, got {min_opacity}")
            min_opacity = float(min_opacity)
        return cls(max_splats, min_opacity)

    @property
    def limited(self) -> bool:
        """Whether this removes anything at all from some scene."""
        return self.max_splats is not None or bool(self.min_opacity)

    def as_dict(self) -> dict[str, int | float]:
        """The limits that are set, e.g. ``{"max_splats": 300000}`` (for records, cache keys)."""
        found = {"max_splats": self.max_splats, "min_opacity": self.min_opacity}
        return {key: value for key, value in found.items() if value is not None}


def importance(gaussians: Gaussians) -> np.ndarray:
    """Each splat's importance, ``opacity * s1 * s2 / d**2`` (float64; NaN becomes -inf)."""
    scales = np.sort(np.abs(np.asarray(gaussians.scales, dtype=np.float64)), axis=1)
    area = scales[:, 2] * scales[:, 1]
    distance = np.linalg.norm(np.asarray(gaussians.positions, dtype=np.float64), axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        score = (
            np.asarray(gaussians.opacities, dtype=np.float64)
            * area
            / np.maximum(distance, _MIN_DISTANCE) ** 2
        )
    return np.where(np.isnan(score), -np.inf, score)


def _keep(gaussians: Gaussians, density: Density) -> np.ndarray:
    """Indices of the splats to keep, ascending."""
    n = len(gaussians)
    keep = np.arange(n)
    if density.min_opacity:
        opacities = np.asarray(gaussians.opacities, dtype=np.float64)
        keep = keep[opacities >= density.min_opacity]  # NaN compares False: dropped
    if density.max_splats is not None and len(keep) > density.max_splats:
        score = importance(gaussians)[keep]
        # Stable sort of -score: among equal scores the earlier splat wins.
        best = np.argsort(-score, kind="stable")[: density.max_splats]
        keep = np.sort(keep[best])
    return keep


def reduce_density(gaussians: Gaussians, density: Density) -> Gaussians:
    """The scene with only the splats ``density`` keeps (the same object if it keeps all).

    The camera, depth map and metadata are kept; ``metadata["density"]`` records the
    limits and how many splats were kept of how many.
    """
    if not density.limited:
        return gaussians
    keep = _keep(gaussians, density)
    if len(keep) == len(gaussians):
        return gaussians
    metadata = {
        **gaussians.metadata,
        "density": {**density.as_dict(), "kept": len(keep), "of": len(gaussians)},
    }
    return replace(
        gaussians,
        positions=np.asarray(gaussians.positions)[keep],
        scales=np.asarray(gaussians.scales)[keep],
        rotations=np.asarray(gaussians.rotations)[keep],
        colors=np.asarray(gaussians.colors)[keep],
        opacities=np.asarray(gaussians.opacities)[keep],
        metadata=metadata,
    )
