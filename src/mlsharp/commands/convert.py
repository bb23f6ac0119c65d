"""``mlsharp convert IN OUT``: re-encode a scene file, formats chosen by the file suffixes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mlsharp.commands.output import check_output_file, describe, writing
from mlsharp.errors import ConfigError


def convert(
    source: str | Path,
    dest: str | Path,
    *,
    frame: str | None = None,
    input_frame: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Read ``source`` and write it to ``dest``; both formats come from the suffixes.

    Args:
        source: a ``.ply``, ``.standard.ply``, ``.splat`` or ``.spz`` scene.
        dest: the output; any format of :data:`mlsharp.splat.FORMATS` by suffix (depth
            formats need a prediction and fail with :class:`DepthUnavailable`).
        frame: frame of ``dest`` for formats that take one (default: the format's).
        input_frame: frame ``source`` is stored in, for formats that do not record it.
        overwrite: replace an existing ``dest``.

    Raises:
        ConfigError: unknown suffix or frame, a ``frame`` the output cannot take, missing
            input.
        OutputExists: ``dest`` exists and ``overwrite`` is false.
        OutputError: ``dest`` cannot be written (its folder is missing, permissions, ...).
        PlyFormatError, SceneFormatError: the input is not readable.
    """
    from mlsharp import splat
    from mlsharp.commands.predict import writer_options

    source, dest = Path(source), Path(dest)
    in_format = splat.format_for_path(source)
    out_format = splat.format_for_path(dest)
    if frame is not None:
        _check_output_frame(out_format, splat.check_frame(frame))
    if not source.is_file():
        raise ConfigError(f"input {source} does not exist or is not a file")
    check_output_file(dest, overwrite=overwrite)
    try:
        gaussians = splat.read(source, in_format, frame=input_frame)
    except OSError as error:
        raise ConfigError(f"cannot read {source}: {describe(error)}") from None
    with writing(dest):
        return splat.write(gaussians, dest, out_format, **writer_options(out_format, frame))


def _check_output_frame(out_format: str, frame: str) -> None:
    """Refuse a ``--frame`` the reference ``.ply`` cannot honour (rather than ignore it).

    Raises:
        ConfigError: ``frame`` is not ``opencv`` and the output is the reference layout
            (always in the model's OpenCV frame).
    """
    from mlsharp.splat import FRAME_FORMATS, SUFFIXES

    if out_format == "ply" and frame != "opencv":
        takes = ", ".join(SUFFIXES[fmt] for fmt in FRAME_FORMATS)
        raise ConfigError(
            f"--frame {frame}: a reference-layout .ply is always in the model's opencv "
            f"frame; --frame applies to {takes} outputs (e.g. OUT.standard.ply)"
        )


def run_convert(args: argparse.Namespace) -> int:
    """Run the ``convert`` command; prints one line on success."""
    start = time.perf_counter()
    dest = convert(
        args.input,
        args.output,
        frame=args.frame,
        input_frame=args.input_frame,
        overwrite=args.overwrite,
    )
    size = dest.stat().st_size
    print(
        f"{args.input} -> {dest} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.2f}s)",
        file=sys.stderr,
    )
    return 0
