"""Allowed values of the settings that the command line offers as choices.

Kept apart from :mod:`mlsharp.config` so ``mlsharp --help`` needs no pydantic import.
"""

from __future__ import annotations

PRESET_CHOICES: tuple[str, ...] = ("sharp", "tiny")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
