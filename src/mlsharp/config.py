"""Settings shared by the front ends: command-line options > environment > defaults.

Environment variables (all optional):

    MLSHARP_CHECKPOINT  path or URL of the .pt checkpoint (default: Apple's release, cached)
    MLSHARP_PRESET      network preset: sharp (default) or tiny (tests and demos)
    MLSHARP_DEVICE      auto (default), cpu, cuda or mps
    MLSHARP_CACHE       where downloads are cached (default: the platform cache dir)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlsharp.errors import ConfigError

PRESET_CHOICES: tuple[str, ...] = ("sharp", "tiny")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Settings:
    """Model and runtime settings; build with :meth:`from_env` and override per field."""

    checkpoint: str | None = None
    preset: str = "sharp"
    device: str = "auto"

    @classmethod
    def from_env(cls, **overrides: str | None) -> Settings:
        """Read ``MLSHARP_*`` variables; non-``None`` keyword overrides win."""
        values = {
            "checkpoint": os.environ.get("MLSHARP_CHECKPOINT") or None,
            "preset": os.environ.get("MLSHARP_PRESET") or "sharp",
            "device": os.environ.get("MLSHARP_DEVICE") or "auto",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values outside the allowed choices."""
        if self.preset not in PRESET_CHOICES:
            raise ConfigError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(PRESET_CHOICES)}"
            )
        if self.device.split(":", 1)[0] not in DEVICE_CHOICES:
            raise ConfigError(
                f"unknown device {self.device!r}; choose one of {', '.join(DEVICE_CHOICES)}"
            )
