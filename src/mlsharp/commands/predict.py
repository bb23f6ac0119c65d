"""``mlsharp predict INPUT... -o OUTDIR [--format ply,spz,...]``: photos in, scene files out."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlsharp.commands.output import SceneOutput, describe_outputs
from mlsharp.config import Settings
from mlsharp.errors import MlsharpError, OutputError, OutputExists
from mlsharp.imaging import check_focal_mm, is_supported_path

if TYPE_CHECKING:
    from mlsharp.engine import Engine
    from mlsharp.gaussians import Gaussians
    from mlsharp.imaging import LoadedImage


@dataclass
class Job:
    """One photo and where each of its output files goes (format -> path, in order)."""

    source: Path
    outputs: dict[str, Path]


@dataclass
class Plan:
    """What to do, plus inputs already known to fail (missing, clashing, existing)."""

    jobs: list[Job]
    failures: list[tuple[str, str]]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_supported_path(p))


def _outputs(base: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """``OUTDIR/<sub>/<stem>`` -> one path per format, with the format's suffix."""
    from mlsharp.splat import SUFFIXES

    return {fmt: base.with_name(base.name + SUFFIXES[fmt]) for fmt in formats}


def plan_jobs(
    inputs: list[str], outdir: Path, *, overwrite: bool, formats: tuple[str, ...] = ("ply",)
) -> Plan:
    """Expand files and folders into jobs, one output file per format.

    A file given directly goes to ``OUTDIR/<stem><suffix>``; files found in a folder keep
    their sub-folder below it (``OUTDIR/<sub>/<stem><suffix>``) so equal names in different
    folders do not collide. A photo whose outputs would overwrite another photo's, or an
    existing file without ``overwrite``, is reported as a failure instead (none of its
    files is written), so nothing is ever clobbered by accident.
    """
    jobs: list[Job] = []
    failures: list[tuple[str, str]] = []
    claimed: dict[Path, Path] = {}
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = _images_in(path)
            if not found:
                failures.append((raw, "no supported images in this folder"))
            pairs = [(p, outdir / p.relative_to(path).parent / p.stem) for p in found]
        elif path.is_file():
            pairs = [(path, outdir / path.stem)]
        else:
            failures.append((raw, "no such file or folder"))
            continue
        for source, base in pairs:
            outputs = _outputs(base, formats)
            clash = next((d for d in outputs.values() if d in claimed), None)
            existing = next((d for d in outputs.values() if d.exists()), None)
            if clash is not None:
                failures.append(
                    (str(source), f"output {clash} is already used by {claimed[clash]}")
                )
            elif existing is not None and not overwrite:
                failures.append((str(source), f"{existing} exists (use --overwrite to replace it)"))
            else:
                claimed.update(dict.fromkeys(outputs.values(), source))
                jobs.append(Job(source, outputs))
    return Plan(jobs, failures)


def _make_output_folder(outdir: Path) -> None:
    """Create OUTDIR (and its parents): ``-o`` names a folder, which predict creates.

    Raises:
        OutputError: it cannot be created (no permission, a file in the way, ...).
    """
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the output folder {outdir}: {error.strerror or error}"
        ) from None


def _report(line: str) -> None:
    # tqdm.write keeps the progress bar intact below the printed line.
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """Run the ``predict`` command; 0 only if every input produced all its outputs."""
    from tqdm import tqdm

    from mlsharp.engine import Engine
    from mlsharp.splat import parse_formats

    # Option errors first, before any file is looked at or the model is loaded.
    formats = parse_formats(getattr(args, "format", None) or "ply")
    output = SceneOutput.from_args(args)
    settings = Settings.from_env(
        checkpoint=args.checkpoint,
        preset=args.preset,
        device=args.device,
        precision=getattr(args, "precision", None),
        resolution=getattr(args, "resolution", None),
        batch_size=getattr(args, "batch_size", None),
        backend=getattr(args, "backend", None),
        backend_device=getattr(args, "backend_device", None),
        int8_weights=getattr(args, "int8_weights", None),
    )
    check_focal_mm(args.focal_mm)  # once, before any work, rather than once per image
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise OutputExists(f"output {outdir} exists and is not a folder")
    plan = plan_jobs(args.inputs, outdir, overwrite=args.overwrite, formats=formats)
    for source, reason in plan.failures:
        _report(f"skipped {source}: {reason}")
    if not plan.jobs:
        return 1 if plan.failures else 0
    _make_output_folder(outdir)  # before the model loads: a bad -o fails in a second

    engine = Engine.load(
        settings.checkpoint,
        preset=settings.preset,
        device=settings.device,
        download=not args.offline,
        progress=not args.quiet,
        options=settings.runtime_options(),
    )
    failed = len(plan.failures)
    bar = tqdm(
        total=len(plan.jobs), desc="predict", unit="image", file=sys.stderr, disable=args.quiet
    )
    start = 0
    while start < len(plan.jobs):
        # Asked before each batch: on CUDA the estimate grows once a forward was measured.
        batch = plan.jobs[start : start + engine.suggested_batch_size()]
        start += len(batch)
        failed += _predict_batch(engine, batch, args=args, output=output)
        bar.update(len(batch))
    bar.close()
    done = len(plan.jobs) + len(plan.failures) - failed
    if failed:
        _report(f"{done} of {done + failed} images done, {failed} failed")
    return 1 if failed else 0


def _predict_batch(
    engine: Engine, jobs: list[Job], *, args: argparse.Namespace, output: SceneOutput
) -> int:
    """Decode ``jobs``' photos, predict them in one forward, write each photo's files;
    one line per photo. Returns how many failed (each failure stays with its photo)."""
    from mlsharp.imaging import load_image

    decoded: list[tuple[Job, LoadedImage, float]] = []
    failed = 0
    for job in jobs:
        start = time.perf_counter()
        try:
            image = load_image(job.source, focal_mm=args.focal_mm)
        except MlsharpError as error:
            failed += 1
            _report(f"failed {job.source}: {error}")
            continue
        decoded.append((job, image, time.perf_counter() - start))
    if not decoded:
        return failed
    results = engine.predict_batch([image for _, image, _ in decoded])
    for (job, image, decode), result in zip(decoded, results, strict=True):
        try:
            _write_one(
                job, image, result.unwrap(), decode=decode, overwrite=args.overwrite, output=output
            )
        except MlsharpError as error:
            failed += 1
            _report(f"failed {job.source}: {error}")
        except OSError as error:  # e.g. the output disk is full or read-only
            failed += 1
            where = error.filename or next(iter(job.outputs.values()))
            _report(f"failed {job.source}: cannot write {where}: {error.strerror or error}")
    return failed


def _write_one(
    job: Job,
    image: LoadedImage,
    gaussians: Gaussians,
    *,
    decode: float,
    overwrite: bool,
    output: SceneOutput,
) -> None:
    """Thin out (``--max-splats``) and write one photo's Gaussians in every format, then
    print its line: the files with their sizes, the splat count and the timings."""
    from mlsharp import splat

    predicted = len(gaussians)
    start = time.perf_counter()
    gaussians = splat.reduce_density(gaussians, output.density)
    if not overwrite:
        for dest in job.outputs.values():
            if dest.exists():  # created by someone else during the run
                raise OutputExists(f"{dest} appeared meanwhile; not overwriting it")
    for fmt, dest in job.outputs.items():
        splat.write(gaussians, dest, fmt, **output.writer_options(fmt))  # atomic per file
    write = time.perf_counter() - start
    times = gaussians.metadata["timings"]
    written = describe_outputs(job.outputs.values())
    kept = f"{predicted:,}"
    if len(gaussians) < predicted:
        kept = f"{len(gaussians):,} of {kept}"
    _report(
        f"{job.source} -> {written} ({kept} Gaussians, "
        f"{image.width}x{image.height}, f={image.focal_px:.1f}px [{image.focal_source}]; "
        f"decode {decode:.2f}s, inference {times.preprocess + times.inference:.2f}s, "
        f"post-process {times.postprocess:.2f}s, write {write:.2f}s)"
    )
