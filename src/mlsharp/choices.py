"""Allowed values of the settings that the command line offers as choices.

Kept apart from :mod:`mlsharp.config` so ``mlsharp --help`` needs no pydantic import.
"""

from __future__ import annotations

PRESET_CHOICES: tuple[str, ...] = ("sharp", "tiny")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
LOG_FORMATS: tuple[str, ...] = ("text", "json")


def check_device_name(value: str) -> str:
    """Return ``value`` if it names a device choice or ``cuda:N``; else raise ``ValueError``.

    ``N`` is a GPU index written as torch prints it: ASCII digits without leading zeros
    (``cuda:0``, ``cuda:12``), at most three of them, so ``cuda:``, ``cuda:01``,
    ``cuda:-1``, ``cuda:+1`` and ``cuda:99999999999`` are refused here with one message
    instead of failing later inside torch.
    """
    kind, colon, index = value.partition(":")
    digits = index.isascii() and index.isdigit() and len(index) <= 3
    canonical = digits and str(int(index)) == index
    if kind not in DEVICE_CHOICES or (colon and not (kind == "cuda" and canonical)):
        raise ValueError(
            f"unknown device {value!r}; choose one of {', '.join(DEVICE_CHOICES)}, or cuda:N "
            "with N a GPU index (0, 1, ...)"
        )
    return value
