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
from mlsharp.errors import MlsharpError, NotAPanorama, OutOfMemory, OutputError, OutputExists
from mlsharp.imaging import check_focal_mm, is_supported_path

if TYPE_CHECKING:
    from mlsharp.engine import Engine
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
    # A panorama's views are batched by predict_panorama; photos of other jobs are not.
    if not panorama and _batching(settings.batch_size, engine, len(plan.jobs)):  # runtime.md
        engine = BatchedPredictions(engine, plan.jobs, focal_mm=args.focal_mm)  # type: ignore[assignment]
    failed = len(plan.failures)
    bar = tqdm(plan.jobs, desc="predict", unit="image", file=sys.stderr, disable=args.quiet)
    for job in bar:
        try:
            _predict_one(
                engine,
                job,
                focal_mm=args.focal_mm,
                overwrite=args.overwrite,
                output=output,
                panorama=panorama,
                bar=bar,
            )
        except MlsharpError as error:
            failed += 1
            _report(f"failed {job.source}: {error}")
        except OSError as error:  # e.g. the output disk is full or read-only
            failed += 1
            where = error.filename or next(iter(job.outputs.values()))
            _report(f"failed {job.source}: cannot write {where}: {error.strerror or error}")
    done = len(plan.jobs) + len(plan.failures) - failed
    if failed:
        _report(f"{done} of {done + failed} images done, {failed} failed")
    return 1 if failed else 0


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


def _batching(batch_size: int | None, engine: Any, photos: int) -> bool:
    """Whether to predict several photos per forward: when asked to (``--batch-size N``
    above 1), or by default on CUDA, where the engine sizes batches by free memory."""
    if photos < 2:
        return False
    if batch_size is not None:
        return batch_size > 1
    return engine.device.type == "cuda"


class BatchedPredictions:
    """Stands in for the engine in the per-photo loop and predicts photos in batches.

    The loop calls ``predict(image)`` once per job, in job order. On a photo not predicted
    yet, this decodes it and the next ``batch_size - 1`` jobs' photos and predicts them in
    one ``Engine.predict_many``; later calls return the stored results. A photo whose
    decode fails here is left out of the batch (the loop reports its error itself). The
    batch size is the engine's :meth:`~mlsharp.engine.Engine.suggested_batch_size`, asked
    before each batch; a batch that runs out of memory is predicted again photo by photo.
    """

    def __init__(self, engine: Engine, jobs: list[Job], *, focal_mm: float | None) -> None:
        self.engine = engine
        self.jobs = jobs
        self.focal_mm = focal_mm
        self._cursor = 0
        self._results: dict[int, Any] = {}

    def predict(self, image: Any) -> Any:
        """The Gaussians of ``image`` (the photo of the next job with its name)."""
        from mlsharp.imaging import load_image
        from mlsharp.panorama import panorama_kind

        index = next(
            (i for i in range(self._cursor, len(self.jobs)) if _label(self.jobs[i]) == image.name),
            None,
        )
        if index is None:  # not one of the planned jobs: predict it alone
            return self.engine.predict(image)
        self._cursor = index + 1
        if index not in self._results:
            batch, images = [index], [image]
            size = self.engine.suggested_batch_size()
            for other in range(index + 1, min(index + size, len(self.jobs))):
                try:
                    other_image = load_image(self.jobs[other].source, focal_mm=self.focal_mm)
                    if panorama_kind(other_image, None) is not None:
                        continue  # a tagged panorama: its turn predicts it view by view
                except MlsharpError:
                    continue  # its own turn in the loop reports the error
                images.append(other_image)
                batch.append(other)
            self._results.update(zip(batch, self._predict(images), strict=True))
        result = self._results.pop(index)
        if isinstance(result, OutOfMemory):
            raise result
        return result

    def _predict(self, images: list[Any]) -> list[Any]:
        """The Gaussians of ``images``: one forward, or one each if together they do not
        fit in memory (an out-of-memory error of a single photo is stored as its result
        and raised when the loop asks for it)."""
        try:
            return self.engine.predict_many(images, batch_size=len(images))
        except OutOfMemory:
            if len(images) == 1:
                raise
        results: list[Any] = []
        for image in images:
            try:
                results.append(self.engine.predict(image))
            except OutOfMemory as error:
                results.append(error)
        return results


def _label(job: Job) -> str:
    """The name ``load_image`` gives the photo of ``job`` (a mismatch only costs batching)."""
    return "".join(ch if ch.isprintable() else "?" for ch in job.source.name)


def _predict_one(
    engine: Engine,
    job: Job,
    *,
    focal_mm: float | None,
    overwrite: bool,
    output: SceneOutput,
    panorama: bool | None = None,
    bar: Any = None,
) -> None:
    """Decode, predict, thin out (``--max-splats``) and write one photo in every format,
    then print its line: the files with their sizes, the splat count and the timings.

    ``panorama``: ``True`` treats the photo as a 360° panorama, ``False`` never, ``None``
    when its XMP says it is one; ``bar`` (a tqdm bar) shows the panorama's view in progress.
    """
    from mlsharp import splat
    from mlsharp.imaging import load_image
    from mlsharp.panorama import panorama_kind

    start = time.perf_counter()
    image = load_image(job.source, focal_mm=focal_mm)
    decode = time.perf_counter() - start
    kind = panorama_kind(image, panorama)
    if kind is None:
        gaussians = engine.predict(image)
    else:
        gaussians = _predict_panorama(engine, image, kind, bar)
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
    if kind is not None:
        _report_panorama(job, written, kept, gaussians, image, decode, write)
        return
    _report(
        f"{job.source} -> {written} ({kept} Gaussians, "
        f"{image.width}x{image.height}, f={image.focal_px:.1f}px [{image.focal_source}]; "
        f"decode {decode:.2f}s, inference {times.preprocess + times.inference:.2f}s, "
        f"post-process {times.postprocess:.2f}s, write {write:.2f}s)"
    )


def _predict_panorama(engine: Any, image: Any, kind: PanoramaKind, bar: Any) -> Any:
    """Predict a panorama view by view; the bar's postfix names the view in progress."""
    from mlsharp.panorama import predict_panorama

    base = engine.engine if isinstance(engine, BatchedPredictions) else engine

    def progress(stage: str, fraction: float) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{image.name}: {stage}", refresh=True)

    try:
        return predict_panorama(
            base, image, kind=kind, max_side=base.internal_resolution, progress=progress
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
