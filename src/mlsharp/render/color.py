"""Colour handling of renderings: the scene stores linear RGB, images are sRGB.

Splats are composited in the scene's colour space (linear RGB for the model, as the
reference renderer does); the composited image is then encoded with the sRGB transfer
function (IEC 61966-2-1) and quantised to 8 bits. Background colours are given in sRGB
(what a user means by "grey") and converted to linear before compositing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsharp.errors import ConfigError

Background = tuple[float, float, float]

_NAMED: dict[str, Background] = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


def parse_background(value: str | Sequence[float]) -> Background:
    """A background colour from ``black``, ``white``, ``#rrggbb`` or three floats in [0, 1]
    (sRGB).

    Raises:
        ConfigError: the value is not one of those.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMED:
            return _NAMED[text]
        digits = text.removeprefix("#")
        if len(digits) == 6 and all(c in "0123456789abcdef" for c in digits):
            rgb = tuple(int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
            return rgb  # type: ignore[return-value]
        raise ConfigError(f"background {value!r} is not black, white or #rrggbb")
    rgb = tuple(float(c) for c in value)
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise ConfigError(f"background {value!r} must be three numbers in [0, 1]")
    return rgb


def srgb_to_linear(srgb: torch.Tensor) -> torch.Tensor:
    """Decode sRGB values in [0, 1] to linear RGB."""
    return torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Encode linear RGB to sRGB (values are clamped to [0, 1] first)."""
    x = linear.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def to_uint8(image: torch.Tensor, *, linear: bool) -> torch.Tensor:
    """(H, W, 3) float image -> uint8 sRGB (encoded first when ``linear``)."""
    srgb = linear_to_srgb(image) if linear else image.clamp(0.0, 1.0)
    return (srgb * 255.0 + 0.5).to(torch.uint8)
