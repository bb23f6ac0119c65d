"""Every list of choices the settings and the command line offer, defined once.

Each is a ``Literal`` type (the settings' field types and the library's signatures) and
the tuple of its values (argparse ``choices``, ``--help`` and error messages), so adding a
choice is one edit here. Kept apart from :mod:`mlsharp.config` so ``mlsharp --help`` needs
no pydantic (nor NumPy, nor torch) import.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Network presets: ``sharp`` (Apple's release) or ``tiny`` (tests).
Preset = Literal["sharp", "tiny"]
PRESET_CHOICES: tuple[str, ...] = get_args(Preset)

#: Numeric precision of the network forward. ``fp32``: the reference. ``tf32``: fp32
#: storage with TF32 matmuls/convolutions (Ampere+). ``bf16`` / ``fp16``: autocast, with
#: normalisations, heads and post-processing in fp32.
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)

#: Coordinate frames a viewer format can be written in (y down or y up).
Frame = Literal["opencv", "opengl"]
FRAME_CHOICES: tuple[str, ...] = get_args(Frame)

#: Log line formats.
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

#: What runs the network forward (docs/hardware.md): ``torch`` (the reference), ``openvino``
#: and ``onnxruntime`` (optional extras), or ``auto`` (torch on GPUs; on a CPU the backend
#: ``mlsharp autotune`` measured fastest within the accuracy guard, else torch).
Backend = Literal["auto", "torch", "openvino", "onnxruntime"]
BACKEND_CHOICES: tuple[str, ...] = get_args(Backend)

#: File formats of ``mlsharp export --runtime``: an OpenVINO IR or an ONNX file.
ExportRuntime = Literal["openvino", "onnx"]
EXPORT_RUNTIME_CHOICES: tuple[str, ...] = get_args(ExportRuntime)

#: Precisions ``mlsharp export --precision`` writes a model for (fp16: OpenVINO weights in
#: half precision; bf16: an OpenVINO inference mode recorded in the manifest).
ExportPrecision = Literal["fp32", "fp16", "bf16"]
EXPORT_PRECISION_CHOICES: tuple[str, ...] = get_args(ExportPrecision)

#: Weights of ``mlsharp export --weights``: as computed (float) or 8-bit weight-only.
ExportWeights = Literal["float", "int8"]
EXPORT_WEIGHTS_CHOICES: tuple[str, ...] = get_args(ExportWeights)


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
