"""The ``mlsharp`` command line: a thin shell over the library.

Every user error surfaces as one line ``mlsharp: error: ...`` and a non-zero exit status
(see ``mlsharp.errors``). Heavy modules (torch, the network) are imported inside the
commands, so ``mlsharp --help`` and ``--version`` answer instantly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from mlsharp import formats
from mlsharp._version import __version__
from mlsharp.choices import (
    BACKEND_CHOICES,
    EXPORT_PRECISION_CHOICES,
    EXPORT_RUNTIME_CHOICES,
    EXPORT_WEIGHTS_CHOICES,
    FRAME_CHOICES,
    LOG_FORMATS,
    PRECISION_CHOICES,
    PRESET_CHOICES,
    check_device_name,
)
from mlsharp.errors import MlsharpError

#: Exit status when stdout's reader closed the pipe (128 + SIGPIPE, as shells report).
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130

#: Each command's runner as (module, function), imported only when the command runs so
#: heavy modules stay out of ``--help``. A runner takes the parsed arguments and returns
#: the exit status. Add a command here and its sub-parser in :func:`build_parser`.
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("mlsharp.commands.predict", "run_predict"),
    "download": ("mlsharp.commands.download", "run_download"),
    "serve": ("mlsharp.commands.serve", "run_serve"),
    "worker": ("mlsharp.commands.worker", "run_worker"),
    "config": ("mlsharp.commands.serve", "run_config"),
    "random-checkpoint": ("mlsharp.commands.random_checkpoint", "run_random_checkpoint"),
    "convert": ("mlsharp.commands.convert", "run_convert"),
    "doctor": ("mlsharp.commands.doctor", "run_doctor"),
    "autotune": ("mlsharp.commands.autotune", "run_autotune"),
    "render": ("mlsharp.commands.render", "run_render"),
    "export": ("mlsharp.commands.export", "run_export"),
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


def _or_list(names: Sequence[str]) -> str:
    """``a, b, c or d`` (a list of choices in a help text)."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _add_backend_options(parser: argparse.ArgumentParser, *, int8: bool = True) -> None:
    """``--backend``, ``--backend-device`` and (with ``int8``) ``--int8-weights``
    (docs/hardware.md)."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help=f"what runs the network: {_or_list(BACKEND_CHOICES)}; auto (default): torch on "
        "GPUs, on a CPU the backend `mlsharp autotune` measured fastest within the accuracy "
        "guard, else torch (extras: pip install mlsharp[openvino] / mlsharp[onnx]); "
        "$MLSHARP_BACKEND",
    )
    parser.add_argument(
        "--backend-device",
        metavar="DEVICE",
        help="openvino: CPU (default), GPU, NPU or AUTO; onnxruntime: providers in order, "
        "e.g. qnn,dml,cuda,cpu (default: cuda, dml, coreml when present, then cpu); "
        "$MLSHARP_BACKEND_DEVICE",
    )
    if int8:
        parser.add_argument(
            "--int8-weights",
            action="store_true",
            default=None,
            help="run the network with 8-bit weight-only compressed weights (openvino, "
            "onnxruntime); check its error with `mlsharp autotune`; $MLSHARP_INT8_WEIGHTS",
        )


def _frame_help(what: str = "outputs") -> str:
    takes = [s for s in formats.FORMATS.values() if s.takes_frame]
    defaults = ", ".join(f"{s.frame} for {s.name}" for s in takes)
    return (
        f"coordinate frame of {what} in {', '.join(s.name for s in takes)} (default: "
        f"{defaults}; see docs/formats.md)"
    )


def _positive_int(value: str) -> int:
    """argparse type of counts: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return number


def _opacity(value: str) -> float:
    """argparse type of ``--min-opacity``: a number from 0 to 1 (1 excluded)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return number


def _add_scene_options(parser: argparse.ArgumentParser) -> None:
    """Format options and density control of ``predict`` and ``convert`` (docs/formats.md)."""
    parser.add_argument(
        "--spz-version",
        type=int,
        choices=formats.SPZ_VERSIONS,
        help="SPZ version of spz outputs: 2 (default, read everywhere), 3, or 4 (zstd; "
        "splat-transform and PlayCanvas tools, not Spark)",
    )
    parser.add_argument(
        "--glb-compression",
        choices=formats.GLB_COMPRESSIONS,
        help="glb outputs: plain accessors (none, default) or one SPZ stream "
        "(KHR_gaussian_splatting_compression_spz_2)",
    )
    parser.add_argument(
        "--max-splats",
        type=_positive_int,
        metavar="N",
        help="keep the N most important splats (opacity x area seen from the photo's "
        "camera; SHARP predicts 1,179,648)",
    )
    parser.add_argument(
        "--min-opacity",
        type=_opacity,
        metavar="A",
        help="drop splats less opaque than A (0 to 1), before --max-splats",
    )


def _add_runtime_options(parser: argparse.ArgumentParser, *, batching: bool = True) -> None:
    """``--precision``, ``--resolution`` and (with ``batching``) ``--batch-size``
    (docs/runtime.md)."""
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="network precision: fp32 (reference, default), tf32 (NVIDIA Ampere+), bf16 or "
        "fp16 (autocast); $MLSHARP_PRECISION",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="PX",
        help="internal resolution, a multiple of 512 up to twice the preset's (sharp: 1536); "
        "lower is faster and uses less memory; $MLSHARP_RESOLUTION",
    )
    if not batching:
        return
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="images per forward (default: what fits in free GPU memory, 1 on CPU); "
        "$MLSHARP_BATCH_SIZE",
    )


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error.

    argparse prints the whole usage block before the message; here it is one line,
    ``mlsharp: error:``, the message and a pointer to ``mlsharp COMMAND --help``
    (exit status 2).
    Sub-parsers inherit the class (``add_subparsers`` uses the parent's).
    """

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with status 2."""
        self.exit(2, f"mlsharp: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mlsharp`` command (no heavy imports)."""
    parser = OneLineErrorParser(
        prog="mlsharp",
        description="One photo in, a 3D Gaussian Splatting scene out (Apple's SHARP model).",
    )
    parser.add_argument("--version", action="version", version=f"mlsharp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="turn photos into 3D Gaussian splats (.ply)",
        description="Predict a 3D Gaussian scene for each photo; writes OUTDIR/<stem>.ply "
        "(other formats with --format). "
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
    predict.add_argument(
        "--format", default="ply", metavar="FMT[,FMT...]", help=formats.formats_help()
    )
    predict.add_argument("--frame", choices=FRAME_CHOICES, help=_frame_help())
    _add_scene_options(predict)
    predict.add_argument(
        "--panorama",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="treat the inputs as 360° panoramas (2:1 equirectangular, or a 4:3 cube-map "
        "cross): one scene around the camera (default: when the file's GPano XMP says "
        "equirectangular; docs/panorama.md)",
    )
    _add_runtime_options(predict)
    _add_backend_options(predict)
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
    _add_runtime_options(serve)
    _add_backend_options(serve)
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json logs")
    serve.add_argument(
        "--offline", action="store_true", default=None, help="never download the checkpoint"
    )
    serve.add_argument(
        "--autotune",
        action="store_true",
        default=None,
        help="run with the options `mlsharp autotune` chose for this device (tuned at start-up "
        "if not cached yet); $MLSHARP_AUTOTUNE",
    )
    serve.add_argument(
        "--queue",
        metavar="redis://HOST:PORT/DB",
        help="scale-out: jobs in Redis, run by `mlsharp worker`s; API only unless --workers "
        "($MLSHARP_QUEUE; docs/deployment.md)",
    )

    worker = commands.add_parser(
        "worker",
        help="run jobs from the Redis queue on one device (scale-out, see docs/deployment.md)",
        description="Load the model once, then take jobs from the queue one at a time. "
        "SIGTERM drains: the job in hand finishes (or goes back to the queue). Start one "
        "worker per GPU (--device cuda:N).",
    )
    worker.add_argument("--queue", metavar="redis://HOST:PORT/DB", help="$MLSHARP_QUEUE")
    worker.add_argument("--data-dir", metavar="DIR", help="shared data dir ($MLSHARP_DATA_DIR)")
    worker.add_argument("--config", metavar="FILE", help="YAML, JSON or TOML settings file")
    _add_model_options(worker)
    _add_runtime_options(worker, batching=False)  # a worker runs one job at a time
    _add_backend_options(worker)
    worker.add_argument(
        "--offline", action="store_true", default=None, help="never download the checkpoint"
    )
    worker.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port"
    )
    worker.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="on SIGTERM, let the job in hand run this long, then hand it back to the "
        "queue (default 60)",
    )
    worker.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json logs")
    worker.add_argument("--debug-job-delay", type=float, default=0.0, help=argparse.SUPPRESS)

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

    scene_suffixes = ", ".join(s.suffix for s in formats.FORMATS.values() if s.scene)
    convert = commands.add_parser(
        "convert",
        help="convert a scene file to another format (chosen by the file suffixes)",
        description=f"Read IN and write OUT; formats come from the suffixes: {scene_suffixes}.",
    )
    convert.add_argument("input", metavar="IN", help=f"scene file ({scene_suffixes})")
    convert.add_argument("output", metavar="OUT", help="output file (.ply, .sog, .glb, ...)")
    convert.add_argument("--frame", choices=FRAME_CHOICES, help=_frame_help("OUT"))
    convert.add_argument(
        "--input-frame",
        choices=FRAME_CHOICES,
        help="frame IN is stored in, for files that do not record it (default: the format's, "
        "see --frame) or a .standard.ply without a frame comment",
    )
    _add_scene_options(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_runtime_commands(commands)
    _add_render_command(commands)
    _add_export_command(commands)
    return parser


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """Sub-parser of ``export`` (docs/hardware.md)."""
    export = commands.add_parser(
        "export",
        help="write the network as an OpenVINO IR or ONNX file (+ manifest.json)",
        description="Export the network (image + disparity factor -> the Gaussians' tensors) at "
        "one internal resolution as an OpenVINO IR or an ONNX file with external weights, "
        "then run it and torch fp32 on the same test image and print the error per output.",
    )
    export.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    export.add_argument(
        "--runtime",
        choices=EXPORT_RUNTIME_CHOICES,
        default=EXPORT_RUNTIME_CHOICES[0],
        help="openvino (IR .xml + .bin, default) or onnx (.onnx + .onnx.data, opset 20)",
    )
    _add_model_options(export)
    export.add_argument(
        "--resolution", type=int, metavar="PX", help="internal resolution (default: the preset's)"
    )
    export.add_argument(
        "--precision",
        choices=EXPORT_PRECISION_CHOICES,
        default=EXPORT_PRECISION_CHOICES[0],
        help="fp32 (default); fp16 and bf16 are OpenVINO inference modes (recorded in the "
        "manifest) whose weights are stored in half precision",
    )
    export.add_argument(
        "--weights",
        choices=EXPORT_WEIGHTS_CHOICES,
        default=EXPORT_WEIGHTS_CHOICES[0],
        help="int8: weight-only 8-bit compression (NNCF for openvino, MatMulNBits for onnx)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace files in DIR")
    export.add_argument(
        "--no-verify", action="store_true", help="skip the comparison with torch fp32"
    )
    export.add_argument("--offline", action="store_true", help="never download the checkpoint")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


#: Mirrors mlsharp.render.TRAJECTORIES / BACKENDS (kept here so ``--help`` imports nothing).
RENDER_TRAJECTORIES = ("orbit", "swing", "dolly", "spiral", "turn", "walk")
RENDER_BACKENDS = ("auto", "torch", "gsplat")


def _add_render_command(commands: argparse._SubParsersAction) -> None:
    """Sub-parser of ``render`` (docs/render.md)."""
    render = commands.add_parser(
        "render",
        help="render a scene to an MP4 camera-path video or a PNG still (any device)",
        description="Render SCENE (.ply, ...) along a camera path around the photo's viewpoint "
        "to OUT.mp4, or one still from the photo's viewpoint to OUT.png. Uses gsplat on CUDA "
        "when installed, else a pure-PyTorch rasterizer (CPU, MPS, ROCm); see docs/render.md.",
    )
    render.add_argument("scene", metavar="SCENE", help="scene file (.ply, ...)")
    render.add_argument("-o", "--output", required=True, metavar="OUT", help=".mp4 or .png")
    render.add_argument(
        "--trajectory",
        choices=RENDER_TRAJECTORIES,
        help="camera path: orbit, swing, dolly, spiral around a photo's viewpoint; turn (in "
        "place) and walk (forward and back) inside a panorama (default: turn for a panorama "
        "scene, else orbit)",
    )
    render.add_argument(
        "--frames", type=int, metavar="N", help="frames (default: 60 for .mp4, 1 for .png)"
    )
    render.add_argument(
        "--size", metavar="WxH", help="output size (default: the photo's aspect, longer side 768)"
    )
    render.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    render.add_argument(
        "--device",
        type=_device_name,
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="compute device (default: auto = cuda, then mps, then cpu)",
    )
    render.add_argument(
        "--backend",
        choices=RENDER_BACKENDS,
        default="auto",
        help="rasterizer: gsplat (CUDA), torch (anywhere), auto (gsplat when usable)",
    )
    render.add_argument(
        "--background", default="black", help="black, white or #rrggbb (default black)"
    )
    render.add_argument(
        "--input-frame",
        choices=FRAME_CHOICES,
        help="frame SCENE is stored in when the file cannot tell (as for convert; default: "
        "opencv for .splat and plain .ply, opengl for .spz)",
    )
    render.add_argument(
        "--fov",
        type=float,
        metavar="DEG",
        help="horizontal field of view (default: the photo's; files without camera data "
        "such as .splat/.spz assume a 512 px focal length at 640x480, about 64 degrees)",
    )
    render.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    render.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_runtime_commands(commands: argparse._SubParsersAction) -> None:
    """Sub-parsers of ``doctor`` and ``autotune`` (docs/doctor.md)."""
    doctor = commands.add_parser(
        "doctor",
        help="check devices, torch build, checkpoint and tuning; say what to fix",
        description="Report what torch sees (CUDA/ROCm/MPS/XPU/CPU), whether the checkpoint is "
        "present and verified, the device `auto` picks and the cached autotune result. Exit "
        "status: 0 healthy (CPU-only included), 4 unusable checkpoint, 5 a GPU torch cannot use.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--checkpoint", metavar="PATH|URL", help="checkpoint to check (default as for predict)"
    )
    doctor.add_argument("--preset", choices=PRESET_CHOICES, help="preset to check it against")
    _add_backend_options(doctor, int8=False)

    autotune = commands.add_parser(
        "autotune",
        help="measure precision modes on this device and cache the fastest accurate one",
        description="Load the real network on the device, time each runtime option (precision, "
        "channels-last, compile, CUDA graphs), compare its output with fp32 and cache the "
        "fastest within tolerance under $MLSHARP_CACHE/autotune (see docs/doctor.md).",
    )
    _add_model_options(autotune)
    autotune.add_argument(
        "--resolution", type=int, metavar="PX", help="internal resolution (default: the preset's)"
    )
    autotune.add_argument(
        "--runs", type=int, default=5, metavar="N", help="timed runs per candidate (default 5)"
    )
    autotune.add_argument(
        "--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)"
    )
    autotune.add_argument("--image", metavar="FILE", help="tune on this photo (default: synthetic)")
    autotune.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="try torch.compile (default: on CUDA only)",
    )
    autotune.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help=f"backends to measure besides the torch reference: {_or_list(BACKEND_CHOICES)}; "
        "auto (default): every installed one on a CPU, torch only on GPUs",
    )
    autotune.add_argument(
        "--backend-device", metavar="DEVICE", help="as for predict (openvino/onnxruntime)"
    )
    autotune.add_argument("--force", action="store_true", help="measure even if cached")
    autotune.add_argument("--json", action="store_true", help="print the result as JSON")
    autotune.add_argument("--offline", action="store_true", help="never download the checkpoint")
    autotune.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


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
    except BrokenPipeError:
        # The reader went away (`mlsharp doctor | head`): stop quietly, as Unix tools do.
        # Point stdout at /dev/null so Python's exit-time flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
