"""``mlsharp predict INPUT... -o OUTDIR``: photos in, one .ply per photo out."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlsharp.config import Settings
from mlsharp.errors import MlsharpError, OutputExists
from mlsharp.imaging import check_focal_mm, is_supported_path

if TYPE_CHECKING:
    from mlsharp.engine import Engine


@dataclass
class Job:
    """One photo and where its splat goes."""

    source: Path
    dest: Path


@dataclass
class Plan:
    """What to do, plus inputs already known to fail (missing, clashing, existing)."""

    jobs: list[Job]
    failures: list[tuple[str, str]]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_supported_path(p))


def plan_jobs(inputs: list[str], outdir: Path, *, overwrite: bool) -> Plan:
    """Expand files and folders into jobs.

    A file given directly goes to ``OUTDIR/<stem>.ply``; files found in a folder keep their
    sub-folder below it (``OUTDIR/<sub>/<stem>.ply``) so equal names in different folders do
    not collide. Two inputs that would still write the same file, and existing outputs
    without ``overwrite``, are reported as failures instead of being clobbered.
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
            pairs = [(p, outdir / p.relative_to(path).parent / f"{p.stem}.ply") for p in found]
        elif path.is_file():
            pairs = [(path, outdir / f"{path.stem}.ply")]
        else:
            failures.append((raw, "no such file or folder"))
            continue
        for source, dest in pairs:
            if dest in claimed:
                failures.append((str(source), f"output {dest} is already used by {claimed[dest]}"))
            elif dest.exists() and not overwrite:
                failures.append((str(source), f"{dest} exists (use --overwrite to replace it)"))
            else:
                claimed[dest] = source
                jobs.append(Job(source, dest))
    return Plan(jobs, failures)


def _report(line: str) -> None:
    # tqdm.write keeps the progress bar intact below the printed line.
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """Run the ``predict`` command; 0 only if every input produced its output."""
    from tqdm import tqdm

    from mlsharp.engine import Engine

    settings = Settings.from_env(checkpoint=args.checkpoint, preset=args.preset, device=args.device)
    check_focal_mm(args.focal_mm)  # once, before any work, rather than once per image
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise OutputExists(f"output {outdir} exists and is not a folder")
    plan = plan_jobs(args.inputs, outdir, overwrite=args.overwrite)
    for source, reason in plan.failures:
        _report(f"skipped {source}: {reason}")
    if not plan.jobs:
        return 1 if plan.failures else 0

    engine = Engine.load(
        settings.checkpoint,
        preset=settings.preset,
        device=settings.device,
        download=not args.offline,
        progress=not args.quiet,
    )
    failed = len(plan.failures)
    bar = tqdm(plan.jobs, desc="predict", unit="image", file=sys.stderr, disable=args.quiet)
    for job in bar:
        try:
            _predict_one(engine, job, focal_mm=args.focal_mm, overwrite=args.overwrite)
        except MlsharpError as error:
            failed += 1
            _report(f"failed {job.source}: {error}")
        except OSError as error:  # e.g. the output disk is full or read-only
            failed += 1
            _report(f"failed {job.source}: cannot write {job.dest}: {error.strerror or error}")
    done = len(plan.jobs) + len(plan.failures) - failed
    if failed:
        _report(f"{done} of {done + failed} images done, {failed} failed")
    return 1 if failed else 0


def _predict_one(engine: Engine, job: Job, *, focal_mm: float | None, overwrite: bool) -> None:
    """Decode, predict and write one photo, then print its timing line."""
    from mlsharp.imaging import load_image
    from mlsharp.splat import write_ply

    start = time.perf_counter()
    image = load_image(job.source, focal_mm=focal_mm)
    decode = time.perf_counter() - start
    gaussians = engine.predict(image)
    start = time.perf_counter()
    if not overwrite and job.dest.exists():  # created by someone else during the run
        raise OutputExists(f"{job.dest} appeared meanwhile; not overwriting it")
    write_ply(gaussians, job.dest)
    write = time.perf_counter() - start
    times = gaussians.metadata["timings"]
    _report(
        f"{job.source} -> {job.dest} ({len(gaussians):,} Gaussians, "
        f"{image.width}x{image.height}, f={image.focal_px:.1f}px [{image.focal_source}]; "
        f"decode {decode:.2f}s, inference {times.preprocess + times.inference:.2f}s, "
        f"post-process {times.postprocess:.2f}s, write {write:.2f}s)"
    )
