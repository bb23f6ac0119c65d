"""The ``mlsharp`` command line: a thin shell over the library.

Every user error surfaces as one line ``mlsharp: error: ...`` and a non-zero exit status
(see ``mlsharp.errors``). Heavy modules (torch, the network) are imported inside the
commands, so ``mlsharp --help`` and ``--version`` answer instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mlsharp._version import __version__
from mlsharp.choices import LOG_FORMATS, PRESET_CHOICES, check_device_name
from mlsharp.errors import MlsharpError

EXIT_INTERRUPTED = 130

#: Each command's runner as (module, function), imported only when the command runs so
#: heavy modules stay out of ``--help``. A runner takes the parsed arguments and returns
#: the exit status. Add a command here and its sub-parser in :func:`build_parser`.
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("mlsharp.commands.predict", "run_predict"),
    "download": ("mlsharp.commands.download", "run_download"),
    "serve": ("mlsharp.commands.serve", "run_serve"),
    "config": ("mlsharp.commands.serve", "run_config"),
    "random-checkpoint": ("mlsharp.commands.random_checkpoint", "run_random_checkpoint"),
}

# Runners that also take the parser (to print their own usage).
_NEEDS_PARSER = {"config"}


def _device_name(value: str) -> str:
    """argparse type of ``--device``: one of the choices, or ``cuda:N``."""
    try:
        return check_device_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        metavar="PATH|URL",
        help="SHARP .pt checkpoint (default: $MLSHARP_CHECKPOINT, else Apple's release, "
        "downloaded once into the cache)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        help="network size: sharp (Apple's release, default) or tiny (tests); $MLSHARP_PRESET",
    )
    parser.add_argument(
        "--device",
        type=_device_name,
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="compute device (default: auto = cuda, then mps, then cpu); $MLSHARP_DEVICE",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mlsharp`` command (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="mlsharp",
        description="One photo in, a 3D Gaussian Splatting scene out (Apple's SHARP model).",
    )
    parser.add_argument("--version", action="version", version=f"mlsharp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="turn photos into 3D Gaussian splats (.ply)",
        description="Predict a 3D Gaussian scene for each photo; writes OUTDIR/<stem>.ply. "
        "Folders are searched recursively by extension.",
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    predict.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    _add_model_options(predict)
    predict.add_argument(
        "--focal-mm",
        type=float,
        metavar="MM",
        help="35 mm-equivalent focal length, overriding EXIF (default: EXIF, else 30 mm)",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--offline", action="store_true", help="never download the checkpoint")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    download = commands.add_parser(
        "download", help="download the SHARP checkpoint into the cache ahead of time"
    )
    download.add_argument("--url", help="download from this URL instead of Apple's release")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    serve = commands.add_parser(
        "serve",
        help="run the REST API (jobs, progress, results, webhooks, metrics)",
        description="Serve the HTTP API on HOST:PORT. Jobs, results and the cache live in "
        "the data directory and survive restarts. Settings: flags > MLSHARP_* environment > "
        "--config file > defaults (see `mlsharp config show`).",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--data-dir", metavar="DIR", help="jobs, results, cache ($MLSHARP_DATA_DIR)")
    serve.add_argument("--config", metavar="FILE", help="YAML, JSON or TOML settings file")
    _add_model_options(serve)
    serve.add_argument(
        "--workers", type=int, help="in-process inference workers (default 1; 0: API only)"
    )
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json logs")
    serve.add_argument(
        "--offline", action="store_true", default=None, help="never download the checkpoint"
    )

    config = commands.add_parser("config", help="show the effective settings")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="print the effective settings as JSON, secrets masked"
    )
    show.add_argument("--config", metavar="FILE", help="YAML, JSON or TOML settings file")

    random_ckpt = commands.add_parser(
        "random-checkpoint",
        help="write a randomly initialised (untrained) checkpoint for tests and demos",
        description="Writes an UNTRAINED checkpoint: its splats are noise. Use it to exercise "
        "the pipeline end to end (with --preset tiny it takes seconds).",
    )
    random_ckpt.add_argument("--preset", choices=PRESET_CHOICES, default="tiny")
    random_ckpt.add_argument("-o", "--output", required=True, metavar="FILE")
    random_ckpt.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlsharp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        module_name, function_name = COMMANDS[args.command]
        run = getattr(importlib.import_module(module_name), function_name)
        return run(args, parser) if args.command in _NEEDS_PARSER else run(args)
    except MlsharpError as error:
        print(f"mlsharp: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("mlsharp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
