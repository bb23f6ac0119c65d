"""Converted models on disk, built on first use and shared by every later process.

``cache_dir()/compiled/<key>/`` holds one export (:mod:`mlsharp.backends.export`): the
model files and ``manifest.json``. The key is a digest of everything that changes the
files: the checkpoint's SHA-256, the preset, the internal resolution, the format, the
weight kind and the versions of the tools that wrote them (torch's exporter, onnx,
OpenVINO, NNCF, ONNX Runtime's quantizer), plus the export format's version. The
runtime's own compiled blobs (OpenVINO's ``CACHE_DIR``) live in
``cache_dir()/compiled/openvino-blobs/<device>-<precision>``, keyed by OpenVINO itself.

A folder at its final name is always complete: an export is built in a temporary
folder beside it and renamed into place (an atomic rename on one file system). When two
processes build the same key at once, both finish and the second rename finds the folder
already there and discards its own copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict
from pathlib import Path

from mlsharp.backends.export import (
    MANIFEST_FORMAT,
    Manifest,
    Progress,
    build_export,
    tool_versions,
)
from mlsharp.backends.export import ExportSpec as ExportSpec

log = logging.getLogger("mlsharp.backends")


def compiled_root() -> Path:
    """``cache_dir()/compiled`` (honours ``$MLSHARP_CACHE``)."""
    from mlsharp.weights import cache_dir

    return cache_dir() / "compiled"


def openvino_blob_dir(device: str, precision: str) -> Path:
    """Where OpenVINO keeps its compiled blobs (its ``CACHE_DIR`` property) for one device
    and inference precision.

    One folder each because OpenVINO's key for a model read from a file is the file's
    path and its properties, not the inference precision: a bf16 compilation importing the
    blob an fp32 one left (or the reverse) ran with the other's graph, and at full scale
    its output was far outside the accuracy guard.
    """
    safe_device = "".join(c if c.isalnum() or c in "._-" else "_" for c in device)
    return compiled_root() / "openvino-blobs" / f"{safe_device}-{precision}"


def cache_key(spec: ExportSpec, checkpoint_sha256: str) -> str:
    """The folder name of ``spec`` exported from the checkpoint with that digest."""
    blob = json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "spec": asdict(spec),
            "checkpoint_sha256": checkpoint_sha256,
            "versions": tool_versions(spec),
        },
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(blob).hexdigest()[:20]
    return f"{spec.format}-{spec.preset}-{spec.resolution}-{spec.weights}-{digest}"


def _complete(folder: Path, spec: ExportSpec) -> bool:
    """The folder holds a readable manifest for ``spec`` and every file it lists."""
    try:
        manifest = Manifest.read(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return manifest.spec == spec and all((folder / name).is_file() for name in manifest.files)


def cached_float_onnx(checkpoint: Path, preset: str, resolution: int) -> Path | None:
    """The cached fp32 ONNX file of ``checkpoint`` at ``resolution``, if an earlier
    first use (or export) left one; nothing is built."""
    from mlsharp.weights import memoized_sha256

    spec = ExportSpec("onnx", preset, resolution, "fp32")
    folder = compiled_root() / cache_key(spec, memoized_sha256(checkpoint))
    return folder / spec.model_file if _complete(folder, spec) else None


def cached_export(
    checkpoint: Path,
    spec: ExportSpec,
    *,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> Path:
    """The folder of ``spec`` exported from ``checkpoint``: from the cache, or built now
    (with messages through ``progress``) and stored atomically."""
    from mlsharp.weights import memoized_sha256

    root = compiled_root()
    folder = root / cache_key(spec, memoized_sha256(checkpoint))
    if _complete(folder, spec):
        return folder
    float_onnx = None
    if spec.format != "onnx" or spec.weights != "fp32":
        # Converted from the cached fp32 ONNX export, which the other backend reuses too:
        # the slow step (tracing the network) runs once per checkpoint and resolution.
        source = ExportSpec("onnx", spec.preset, spec.resolution, "fp32")
        float_onnx = cached_export(checkpoint, source, progress=progress) / source.model_file
    if folder.exists():  # half a folder cannot appear (atomic rename): someone else's mess
        log.warning("replacing the unreadable converted model in %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(
            f"converting the network for {spec.format} (first use of this checkpoint at "
            f"{spec.resolution}px with {spec.weights} weights; the sharp preset takes a few "
            f"minutes and ~12 GB of memory); it is kept in {root}"
        )
    temp = root / f".tmp-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        build_export(
            checkpoint, spec, temp, precision=precision, progress=progress, float_onnx=float_onnx
        )
        try:
            os.rename(temp, folder)
        except OSError:
            if not _complete(folder, spec):  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder
