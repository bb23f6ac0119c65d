"""``mlsharp doctor``: is this machine ready, and what would make it faster?

:func:`examine` combines the device facts and findings (:mod:`mlsharp.runtime.devices`),
the state of the checkpoint (present? the expected bytes? the expected keys and shapes
for the preset?), the device ``auto`` picks, the cached ``mlsharp autotune`` results for
this machine and what to do next, into one JSON-able :class:`DoctorReport`.

Exit status (:attr:`DoctorReport.exit_code`), the first that applies:

* ``4`` the checkpoint is present but unusable (wrong digest, unreadable, not matching
  the preset);
* ``5`` a GPU is present but torch cannot use it (CPU-only torch on an NVIDIA machine,
  driver too old, GPU newer than the torch build, Apple silicon without MPS ...);
* ``0`` otherwise, including a machine without any GPU and a checkpoint not downloaded
  yet (it is fetched on first use).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlsharp.errors import CheckpointError, DeviceError
from mlsharp.runtime.devices import Finding, SystemProbe, auto_device, device_label, diagnose

__all__ = [
    "EXIT_CHECKPOINT",
    "EXIT_DEVICE",
    "EXIT_OK",
    "CheckpointStatus",
    "DoctorReport",
    "TunedSummary",
    "check_checkpoint",
    "examine",
    "render_summary",
]

EXIT_OK = 0
EXIT_CHECKPOINT = CheckpointError.exit_code  # 4, as for every checkpoint error of the CLI
EXIT_DEVICE = DeviceError.exit_code  # 5, as for "requested device not available"


@dataclass(frozen=True)
class CheckpointStatus:
    """What is known about the checkpoint mlsharp would use.

    Attributes:
        path: where it is (or would be downloaded to).
        source: ``--checkpoint``, ``MLSHARP_CHECKPOINT`` or ``default``.
        present: the file exists.
        size: bytes.
        verified: ``True`` when every check passed, ``False`` when one failed, ``None``
            when nothing could be checked (absent).
        checks: what was checked: ``sha256`` (against the digest mlsharp knows for this
            file name) and/or ``keys+shapes`` (a strict load into the preset's network on
            the ``meta`` device: memory-mapped, so cheap).
        sha256: the file's digest (memoised in the cache; part of the autotune key).
        problem: why it is unusable.
    """

    path: str
    source: str
    present: bool
    size: int | None = None
    verified: bool | None = None
    checks: tuple[str, ...] = ()
    sha256: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class TunedSummary:
    """One cached autotune result for a device of this machine."""

    device: str
    device_name: str
    preset: str
    resolution: int
    best: str
    options: dict[str, Any]
    speedup: float | None
    created_at: str
    path: str | None
    matches_checkpoint: bool  # tuned with the checkpoint and preset being checked


@dataclass
class DoctorReport:
    """Everything ``mlsharp doctor`` prints (``--json`` prints :meth:`to_dict`)."""

    system: SystemProbe
    findings: list[Finding]
    auto_device: str
    preset: str
    checkpoint: CheckpointStatus
    autotune: list[TunedSummary] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    render: str = ""  # which rasterizer `mlsharp render` picks, see render_summary()
    backends: list[Any] = field(default_factory=list)  # BackendStatus per backend
    auto_backend: str = ""  # what --backend auto picks, and why

    @property
    def exit_code(self) -> int:
        """See the module docstring."""
        if self.checkpoint.verified is False:
            return EXIT_CHECKPOINT
        if any(f.level == "problem" for f in self.findings):
            return EXIT_DEVICE
        return EXIT_OK

    @property
    def healthy(self) -> bool:
        """No problem found."""
        return self.exit_code == EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "healthy": self.healthy,
            "exit_code": self.exit_code,
            "auto_device": self.auto_device,
            "preset": self.preset,
            "system": self.system.to_dict(),
            "findings": [asdict(f) for f in self.findings],
            "checkpoint": asdict(self.checkpoint),
            "autotune": [asdict(t) for t in self.autotune],
            "next_steps": self.next_steps,
            "render": self.render,
            "backends": [asdict(b) for b in self.backends],
            "auto_backend": self.auto_backend,
        }


def _locate(checkpoint: str | os.PathLike[str] | None) -> tuple[Path, str, bool]:
    """Where the checkpoint is or would be, which setting chose it, and whether it would
    be downloaded when absent (as :func:`mlsharp.weights.resolve_checkpoint` does)."""
    from mlsharp import weights

    source = "--checkpoint"
    if checkpoint is None or not str(checkpoint).strip():
        checkpoint = os.environ.get("MLSHARP_CHECKPOINT", "").strip() or None
        source = "MLSHARP_CHECKPOINT"
    if checkpoint is None:
        return weights.default_checkpoint_path(), "default", True
    text = str(checkpoint)
    if text.lower().startswith(("http://", "https://")):
        name = Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).name
        return weights.cache_dir() / (name or weights.DEFAULT_CHECKPOINT_NAME), source, True
    return Path(text).expanduser(), source, False


def check_checkpoint(
    checkpoint: str | os.PathLike[str] | None = None, *, preset: str = "sharp"
) -> CheckpointStatus:
    """Find the checkpoint and verify it: SHA-256 where mlsharp knows the digest, and
    always a strict keys-and-shapes load into the ``preset`` network (on ``meta``)."""
    from mlsharp import weights

    path, source, downloadable = _locate(checkpoint)
    if not path.exists():
        # The default (or a URL) is downloaded on first use: not a problem. A path the
        # user named that is not there is: predict would fail.
        return CheckpointStatus(
            path=str(path),
            source=source,
            present=False,
            verified=None if downloadable else False,
            problem=None if downloadable else f"{path} does not exist",
        )
    if path.is_dir():
        return CheckpointStatus(
            path=str(path),
            source=source,
            present=True,
            verified=False,
            problem=f"{path} is a directory, not a .pt file",
        )
    size = path.stat().st_size
    checks: list[str] = []
    try:
        digest = weights.memoized_sha256(path)
    except OSError as e:
        return CheckpointStatus(
            path=str(path),
            source=source,
            present=True,
            size=size,
            verified=False,
            problem=f"cannot read {path}: {e.strerror or e}",
        )
    known = weights.KNOWN_CHECKPOINTS.get(path.name)
    problem = None
    if known is not None and known.sha256:
        checks.append("sha256")
        if digest != known.sha256.lower():
            problem = (
                f"SHA-256 {digest} differs from the released file's {known.sha256.lower()} "
                "(corrupt or modified)"
            )
    if problem is None:
        checks.append("keys+shapes")
        problem = _load_problem(path, preset)
    return CheckpointStatus(
        path=str(path),
        source=source,
        present=True,
        size=size,
        verified=problem is None,
        checks=tuple(checks),
        sha256=digest,
        problem=problem,
    )


def _load_problem(path: Path, preset: str) -> str | None:
    """Why ``path`` does not load strictly into the ``preset`` network, or ``None``."""
    from mlsharp import weights
    from mlsharp.model import build_model

    try:
        state = weights.load_state_dict(path)
        weights.load_into(build_model(preset, device="meta"), state, what=path, preset=preset)
    except CheckpointError as e:
        return str(e)
    return None


def _tuned_for_machine(
    probe: SystemProbe, checkpoint: CheckpointStatus, preset: str
) -> list[TunedSummary]:
    from mlsharp.runtime.autotune import cached_results

    devices = ["cpu", *(f"cuda:{g.index}" for g in probe.gpus)]
    if probe.mps_available:
        devices.append("mps")
    here = {(d, device_label(probe, d)) for d in devices}
    summaries = []
    for result in cached_results():
        key = result.key
        if key.torch != probe.torch_version or (key.device, key.device_name) not in here:
            continue
        summaries.append(
            TunedSummary(
                device=key.device,
                device_name=key.device_name,
                preset=key.preset,
                resolution=key.resolution,
                best=result.best.label(),
                options=result.best.to_dict(),
                speedup=result.speedup(result.best_measurement()),
                created_at=result.created_at,
                path=str(result.path) if result.path else None,
                matches_checkpoint=(
                    key.checkpoint_sha256 == checkpoint.sha256 and key.preset == preset
                ),
            )
        )
    # The entries for the checkpoint being checked first.
    return sorted(summaries, key=lambda s: not s.matches_checkpoint)


def _next_steps(report: DoctorReport) -> list[str]:
    steps = [f.fix for f in report.findings if f.level == "problem" and f.fix]
    ckpt = report.checkpoint
    preset = "" if report.preset == "sharp" else f" --preset {report.preset}"
    if not ckpt.present and ckpt.verified is False:
        steps.append(f"pass an existing checkpoint file (nothing at {ckpt.path})")
    elif not ckpt.present:
        steps.append(
            f"get the weights: `mlsharp download` (otherwise they are downloaded on first "
            f"use into {Path(ckpt.path).parent})"
        )
    elif ckpt.verified is False and ckpt.source == "default":
        steps.append(f"replace the checkpoint: delete {ckpt.path} and run `mlsharp download`")
    elif ckpt.verified is False and "does not match the model" in (ckpt.problem or ""):
        steps.append(
            f"check the checkpoint chosen by {ckpt.source}: pass the preset it was made for "
            "(--preset) or another file"
        )
    elif ckpt.verified is False:  # unreadable, truncated, not a checkpoint, wrong digest
        steps.append(
            f"the checkpoint chosen by {ckpt.source} is damaged or not a SHARP checkpoint: "
            "download it again (`mlsharp download`) or pass another file"
        )
    device = report.auto_device
    if ckpt.verified and not any(
        t.matches_checkpoint and t.device.split(":")[0] == device for t in report.autotune
    ):
        steps.append(
            f"optional: `mlsharp autotune{preset}` measures the precision modes on {device} "
            "and caches the fastest one that stays accurate (`mlsharp serve --autotune` uses it)"
        )
    if report.exit_code == EXIT_OK:
        steps.append(f"run: `mlsharp predict photo.jpg -o out/{preset}`")
    return steps


def render_summary(facts: SystemProbe, gsplat_installed: bool) -> str:
    """Which rasterizer ``mlsharp render --backend auto`` uses here, in one phrase.

    gsplat (the ``render-cuda`` extra) is found, never imported: cheap on any machine.
    """
    from mlsharp.render.gsplat_backend import gsplat_usable

    cuda = facts.cuda_available and bool(facts.gpus)
    if cuda and gsplat_usable("cuda", facts.torch_hip, gsplat_installed):
        return "gsplat on CUDA (installed)"
    if gsplat_installed:
        why = "CUDA only, not ROCm" if facts.torch_hip else "installed, needs an NVIDIA GPU"
        return f"PyTorch rasterizer (gsplat: {why})"
    hint = "; pip install 'mlsharp[render-cuda]' for gsplat" if cuda and not facts.torch_hip else ""
    return f"PyTorch rasterizer (gsplat not installed{hint})"


def backend_summary(
    status: CheckpointStatus, preset: str, device: str, backend: str, precision: str
) -> tuple[list[Any], str]:
    """The backends found and what ``--backend`` (``auto`` by default) picks, and why."""
    import torch

    from mlsharp.backends.select import choose_backend, probe_backends
    from mlsharp.errors import MlsharpError
    from mlsharp.runtime.options import RuntimeOptions

    statuses = probe_backends()
    try:
        options = RuntimeOptions(precision=precision, backend=backend)  # type: ignore[arg-type]
        choice = choose_backend(
            options,
            torch.device(device),  # the device auto picks (only its kind matters)
            checkpoint=Path(status.path) if status.present else None,
            preset=preset,
        )
        picked = f"{backend} -> {choice.backend} at {precision}: {choice.reason}"
    except MlsharpError as error:
        picked = f"{backend}: {error}"
    return statuses, picked


def examine(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    preset: str = "sharp",
    probe: SystemProbe | None = None,
    backend: str = "auto",
    precision: str = "fp32",
) -> DoctorReport:
    """Build the report; ``probe`` defaults to :func:`probe_system` (tests pass facts)."""
    from mlsharp.runtime.devices import probe_system

    facts = probe if probe is not None else probe_system()
    status = check_checkpoint(checkpoint, preset=preset)
    report = DoctorReport(
        system=facts,
        findings=diagnose(facts),
        auto_device=auto_device(facts),
        preset=preset,
        checkpoint=status,
        autotune=_tuned_for_machine(facts, status, preset),
    )
    report.next_steps = _next_steps(report)
    from mlsharp.render.gsplat_backend import gsplat_installed

    report.render = render_summary(facts, gsplat_installed())
    report.backends, report.auto_backend = backend_summary(
        status, preset, report.auto_device, backend, precision
    )
    return report
