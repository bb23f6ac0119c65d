"""``mlsharp convert IN OUT``: re-encode a scene file, formats chosen by the file suffixes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mlsharp.errors import ConfigError, OutputExists


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
        ConfigError: unknown suffix or frame, missing input.
        OutputExists: ``dest`` exists and ``overwrite`` is false.
        PlyFormatError, SceneFormatError: the input is not readable.
    """
    from mlsharp import splat
    from mlsharp.commands.predict import writer_options

    source, dest = Path(source), Path(dest)
    in_format = splat.format_for_path(source)
    out_format = splat.format_for_path(dest)
    if frame is not None:
        splat.check_frame(frame)
    if not source.is_file():
        raise ConfigError(f"input {source} does not exist or is not a file")
    if dest.exists() and not overwrite:
        raise OutputExists(f"{dest} exists (use --overwrite to replace it)")
    if dest.is_dir():
        raise OutputExists(f"output {dest} is a folder")
    try:
        gaussians = splat.read(source, in_format, frame=input_frame)
    except OSError as error:
        raise ConfigError(f"cannot read {source}: {error.strerror or error}") from None
    return splat.write(gaussians, dest, out_format, **writer_options(out_format, frame))


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
