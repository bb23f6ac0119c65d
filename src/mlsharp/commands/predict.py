"""``mlsharp predict INPUT... -o OUTDIR [--format ply,spz,...]``: photos in, scene files out."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsharp.commands.output import SceneOutput, describe_outputs
from mlsharp.config import Settings
from mlsharp.errors import MlsharpError, NotAPanorama, OutputError, OutputExists
from mlsharp.imaging import check_focal_mm, is_supported_path
from mlsharp.names import safe_stem

if TYPE_CHECKING:
    from mlsharp.engine import Engine
    from mlsharp.gaussians import Gaussians
    from mlsharp.imaging import LoadedImage
    from mlsharp.panorama import PanoramaKind


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
    folders do not collide. The stem is the file name made safe
    (:func:`mlsharp.names.safe_stem`: no control characters, at most 128 bytes). A photo
    whose outputs would overwrite another photo's, or an existing file without
    ``overwrite``, is reported as a failure instead (none of its files is written), so
    nothing is ever clobbered by accident.
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
            pairs = [(p, outdir / p.relative_to(path).parent / safe_stem(p.name)) for p in found]
        elif path.is_file():
            pairs = [(path, outdir / safe_stem(path.name))]
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
    panorama = getattr(args, "panorama", None)
    if panorama:
        _reject_non_panoramas(plan, args.focal_mm)
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
        # With --panorama every job is a panorama, whose views predict_panorama batches.
        size = 1 if panorama else engine.suggested_batch_size()
        batch = plan.jobs[start : start + size]
        start += len(batch)
        failed += _predict_batch(engine, batch, args=args, output=output, bar=bar)
        bar.update(len(batch))
    bar.close()
    done = len(plan.jobs) + len(plan.failures) - failed
    if failed:
        _report(f"{done} of {done + failed} images done, {failed} failed")
    return 1 if failed else 0


def _predict_batch(
    engine: Engine, jobs: list[Job], *, args: argparse.Namespace, output: SceneOutput, bar: Any
) -> int:
    """Decode ``jobs``' photos, predict them in one forward, write each photo's files;
    one line per photo. A panorama (``--panorama``, or tagged so in its XMP) is predicted
    on its own, view by view. Returns how many failed (each failure stays with its photo)."""
    from mlsharp.imaging import load_image
    from mlsharp.panorama import panorama_kind

    panorama = getattr(args, "panorama", None)
    decoded: list[tuple[Job, LoadedImage, float]] = []
    failed = 0
    for job in jobs:
        start = time.perf_counter()
        try:
            image = load_image(job.source, focal_mm=args.focal_mm)
            decode = time.perf_counter() - start
            kind = panorama_kind(image, panorama)
            if kind is None:
                decoded.append((job, image, decode))
                continue
            gaussians = _predict_panorama(engine, image, kind, bar)
            _write_one(
                job, image, gaussians, decode=decode, overwrite=args.overwrite, output=output
            )
        except (MlsharpError, OSError) as error:
            failed += 1
            _report_failure(job, error)
    if not decoded:
        return failed
    results = engine.predict_batch([image for _, image, _ in decoded])
    for (job, image, decode), result in zip(decoded, results, strict=True):
        try:
            _write_one(
                job, image, result.unwrap(), decode=decode, overwrite=args.overwrite, output=output
            )
        except (MlsharpError, OSError) as error:
            failed += 1
            _report_failure(job, error)
    return failed


def _report_failure(job: Job, error: MlsharpError | OSError) -> None:
    """One line for a photo that failed: its error, or the file that could not be written
    (e.g. the output disk is full or read-only)."""
    if isinstance(error, MlsharpError):
        _report(f"failed {job.source}: {error}")
        return
    where = error.filename or next(iter(job.outputs.values()))
    _report(f"failed {job.source}: cannot write {where}: {error.strerror or error}")


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
    if "panorama" in gaussians.metadata:
        _report_panorama(job, written, kept, gaussians, image, decode, write)
        return
    if image.focal_warning:  # an absurd EXIF focal length: the default was used
        _report(f"warning: {job.source}: {image.focal_warning}")
    _report(
        f"{job.source} -> {written} ({kept} Gaussians, "
        f"{image.width}x{image.height}, f={image.focal_px:.1f}px [{image.focal_source}]; "
        f"decode {decode:.2f}s, inference {times.preprocess + times.inference:.2f}s, "
        f"post-process {times.postprocess:.2f}s, write {write:.2f}s)"
    )


def _reject_non_panoramas(plan: Plan, focal_mm: float | None) -> None:
    """With ``--panorama``: move inputs that are not panoramas from the jobs to the
    failures, before the model loads. When that leaves nothing (one photo given), raise
    its error: one line, no output folder.

    Raises:
        NotAPanorama: the only input is not a panorama.
    """
    from mlsharp.imaging import load_image
    from mlsharp.panorama import panorama_kind

    rejected = []
    for job in list(plan.jobs):
        try:
            panorama_kind(load_image(job.source, focal_mm=focal_mm), True)
        except NotAPanorama as error:
            rejected.append(error)
            plan.jobs.remove(job)
            plan.failures.append((str(job.source), str(error)))
        except MlsharpError:
            continue  # unreadable: its turn in the loop reports it
    if rejected and not plan.jobs and len(plan.failures) == 1:
        raise rejected[0]


def _predict_panorama(engine: Engine, image: LoadedImage, kind: PanoramaKind, bar: Any) -> Any:
    """Predict a panorama view by view; the bar's postfix names the view in progress."""
    from mlsharp.panorama import predict_panorama

    def progress(stage: str, fraction: float) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{image.name}: {stage}", refresh=True)

    try:
        return predict_panorama(
            engine, image, kind=kind, max_side=engine.internal_resolution, progress=progress
        )
    finally:
        if bar is not None:
            bar.set_postfix_str("", refresh=False)


def _report_panorama(
    job: Job, written: str, kept: str, gaussians: Any, image: Any, decode: float, write: float
) -> None:
    """The timing line of a panorama: views, seams and where the time went."""
    info = gaussians.metadata["panorama"]
    times = gaussians.metadata["timings"]
    seams = info["seams"]
    seam = (
        f"seam mismatch {100 * seams['median']:.1f}% median, {100 * seams['p95']:.1f}% p95"
        if seams and seams["samples"]
        else "no seam check"
    )
    views = info["views"]
    _report(
        f"{job.source} -> {written} ({kept} Gaussians, {image.width}x{image.height} "
        f"{info['projection']} panorama, {len(views)} views of {views[0]['side']} px; {seam}; "
        f"decode {decode:.2f}s, cut {times.extra['cut']:.2f}s, "
        f"inference {times.preprocess + times.inference:.2f}s, "
        f"post-process {times.postprocess:.2f}s, merge {times.extra['merge']:.2f}s, "
        f"write {write:.2f}s)"
    )
