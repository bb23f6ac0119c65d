"""Allowed values of the settings that the command line offers as choices.

Kept apart from :mod:`mlsharp.config` so ``mlsharp --help`` needs no pydantic import.
"""

from __future__ import annotations

PRESET_CHOICES: tuple[str, ...] = ("sharp", "tiny")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
LOG_FORMATS: tuple[str, ...] = ("text", "json")


def check_device_name(value: str) -> str:
    """Return ``value`` if it names a device choice or ``cuda:N``; else raise ``ValueError``."""
    kind, _, index = value.partition(":")
    if kind not in DEVICE_CHOICES or (index and not (kind == "cuda" and index.isdigit())):
        raise ValueError(
            f"unknown device {value!r}; choose one of {', '.join(DEVICE_CHOICES)}, cuda:N"
        )
    return value
