"""``mlsharp export -o DIR``: the network as an OpenVINO IR or ONNX file, then a check.

The files are built in a temporary folder inside DIR and moved into place once complete.
The check runs torch fp32 and the exported model on the same synthetic photo and prints
the error of each output (see :mod:`mlsharp.backends.export`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlsharp.errors import ConfigError, OutputError, OutputExists

if TYPE_CHECKING:
    from mlsharp.backends.export import ExportSpec


def _spec(args: argparse.Namespace, preset: str, resolution: int) -> ExportSpec:
    from mlsharp.backends.export import OPENVINO_HALF_PRECISIONS, ExportSpec, stored_weights

    if args.precision in OPENVINO_HALF_PRECISIONS and args.runtime == "onnx":
        raise ConfigError(
            f"{args.precision} is an OpenVINO mode (--runtime openvino); ONNX files are "
            "exported in fp32 or with int8 weights"
        )
    weights = stored_weights(args.runtime, args.precision, int8=args.weights == "int8")
    spec = ExportSpec(args.runtime, preset, resolution, weights)
    spec.check()
    return spec


def _prepare(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise OutputExists(f"output {outdir} exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise OutputExists(f"{outdir} is not empty (use --overwrite to replace its files)")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {outdir}: {error.strerror or error}") from None


def run_export(args: argparse.Namespace) -> int:
    """Export, move the files into ``-o``, verify (unless ``--no-verify``)."""
    from mlsharp.backends.cache import cached_float_onnx
    from mlsharp.backends.export import build_export
    from mlsharp.config import Settings
    from mlsharp.engine import check_resolution
    from mlsharp.model import preset as preset_config
    from mlsharp.weights import resolve_checkpoint

    settings = Settings.from_env(checkpoint=args.checkpoint, preset=args.preset)
    cfg = preset_config(settings.preset)
    resolution = args.resolution or cfg.internal_resolution
    check_resolution(cfg, resolution)
    spec = _spec(args, settings.preset, resolution)
    outdir = Path(args.output)
    _prepare(outdir, args.overwrite)
    checkpoint = resolve_checkpoint(
        settings.checkpoint,
        download=not (args.offline or settings.offline),
        progress=not args.quiet,
    )

    def say(message: str) -> None:
        if not args.quiet:
            print(f"mlsharp: {message}", file=sys.stderr, flush=True)

    # The network traced once already (a --backend first use or an earlier export keeps
    # the fp32 ONNX in the cache): converted from there instead of traced again.
    float_onnx = cached_float_onnx(checkpoint, spec.preset, spec.resolution)
    if float_onnx is not None:
        say(f"using the network traced earlier: {float_onnx}")
    temp = outdir / ".export-in-progress"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        manifest = build_export(
            checkpoint, spec, temp, precision=args.precision, progress=say, float_onnx=float_onnx
        )
        for name in manifest.files:
            (temp / name).replace(outdir / name)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    written = ", ".join(str(outdir / name) for name in manifest.files)
    print(f"wrote {written} ({manifest.seconds:.0f} s)")
    if args.no_verify:
        return 0
    say("comparing the exported model with torch fp32 on a synthetic photo")
    from mlsharp.backends.verify import compare_export, format_comparison

    errors = compare_export(checkpoint, outdir, precision=args.precision)
    print(format_comparison(errors))
    return 0
