"""``mlsharp convert IN OUT``: re-encode a scene file, formats chosen by the file suffixes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mlsharp.commands.output import (
    SceneOutput,
    check_output_file,
    describe,
    describe_outputs,
    writing,
)
from mlsharp.errors import ConfigError


def convert(
    source: str | Path,
    dest: str | Path,
    *,
    frame: str | None = None,
    input_frame: str | None = None,
    overwrite: bool = False,
    output: SceneOutput | None = None,
) -> Path:
    """Read ``source`` and write it to ``dest``; both formats come from the suffixes.

    Args:
        source: a scene in any format mlsharp writes (``.ply``, ``.standard.ply``,
            ``.splat``, ``.spz``, ``.sog``, ``.glb``).
        dest: the output; any format of :data:`mlsharp.formats.FORMATS` by suffix (depth
            formats need a prediction and fail with :class:`DepthUnavailable`).
        frame: frame of ``dest`` for formats that take one (default: the format's).
        input_frame: frame ``source`` is stored in, for formats that do not record it.
        overwrite: replace an existing ``dest``.
        output: format options and density limits (``--spz-version``, ``--max-splats``
            ...); ``frame`` overrides its frame.

    Raises:
        ConfigError: unknown suffix or frame, a ``frame`` the output cannot take, missing
            input.
        OutputExists: ``dest`` exists and ``overwrite`` is false.
        OutputError: ``dest`` cannot be written (its folder is missing, permissions, ...).
        PlyFormatError, SceneFormatError: the input is not readable.
    """
    from dataclasses import replace

    from mlsharp import splat

    output = replace(output or SceneOutput(), frame=frame) if frame else output or SceneOutput()
    source, dest = Path(source), Path(dest)
    in_format = splat.format_for_path(source)
    out_format = splat.format_for_path(dest)
    if output.frame is not None:
        _check_output_frame(out_format, splat.check_frame(output.frame))
    if not source.is_file():
        raise ConfigError(f"input {source} does not exist or is not a file")
    check_output_file(dest, overwrite=overwrite)
    try:
        gaussians = splat.read(
            source, in_format, frame=splat.check_frame(input_frame) if input_frame else None
        )
    except OSError as error:
        raise ConfigError(f"cannot read {source}: {describe(error)}") from None
    gaussians = splat.reduce_density(gaussians, output.density)
    with writing(dest):
        return splat.write(gaussians, dest, out_format, **output.writer_options(out_format))


def _check_output_frame(out_format: str, frame: str) -> None:
    """Refuse a ``--frame`` an output that records its own frame cannot honour (rather than
    ignore it): the reference ``.ply`` is always in the model's OpenCV frame, glTF y up.

    Raises:
        ConfigError: ``frame`` is not the output's fixed frame.
    """
    from mlsharp.formats import FORMATS

    spec = FORMATS[out_format]
    if spec.takes_frame or spec.frame is None or frame == spec.frame:
        return
    takes = ", ".join(s.suffix for s in FORMATS.values() if s.takes_frame)
    if out_format == "ply":
        raise ConfigError(
            f"--frame {frame}: a reference-layout .ply is always in the model's opencv "
            f"frame; --frame applies to {takes} outputs (e.g. OUT.standard.ply)"
        )
    raise ConfigError(
        f"--frame {frame}: a {spec.suffix} file is always in the {spec.frame} frame; "
        f"--frame applies to {takes} outputs"
    )


def run_convert(args: argparse.Namespace) -> int:
    """Run the ``convert`` command; prints one line on success."""
    from mlsharp import splat
    from mlsharp.formats import format_for_path, get

    start = time.perf_counter()
    output = SceneOutput.from_args(args)
    dest = convert(
        args.input,
        args.output,
        input_frame=args.input_frame,
        overwrite=args.overwrite,
        output=output,
    )
    scene = get(format_for_path(dest)).scene
    count = f"{splat.count(dest):,} splats, " if scene else ""
    print(
        f"{args.input} -> {describe_outputs([dest])} ({count}{time.perf_counter() - start:.2f}s)",
        file=sys.stderr,
    )
    return 0
