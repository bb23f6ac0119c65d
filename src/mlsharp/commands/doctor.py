"""``mlsharp doctor``: what torch sees, whether the checkpoint is usable, what to do next.

Exit status: 0 healthy (a CPU-only machine included), 4 unusable checkpoint, 5 a GPU that
is present but unusable (see :mod:`mlsharp.runtime.doctor`).
"""

from __future__ import annotations

import argparse
import json

from mlsharp.backends.select import BackendStatus
from mlsharp.runtime.devices import GpuDevice, SystemProbe
from mlsharp.runtime.doctor import DoctorReport

LABEL_WIDTH = 11


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return _gib(n) if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _torch_line(s: SystemProbe) -> str:
    if s.torch_hip:
        build = f"ROCm/HIP {s.torch_hip}"
    elif s.torch_cuda:
        cudnn = f", cuDNN {s.cudnn_version}" if s.cudnn_version else ""
        build = f"CUDA {s.torch_cuda}{cudnn}"
    else:
        build = "CPU-only build"
    return f"{s.torch_version} ({build})"


def _cpu_line(s: SystemProbe) -> str:
    cpu = s.cpu
    bf16 = {True: "bf16 native", False: "no native bf16", None: "bf16 unknown"}[cpu.bf16_native]
    flags = f" [{' '.join(cpu.flags)}]" if cpu.flags else ""
    name = cpu.name or cpu.architecture
    return f"{name}: {cpu.threads} threads, {cpu.capability}, {bf16}{flags}"


def _gpu_line(gpu: GpuDevice) -> str:
    parts = [f"{gpu.name} ({gpu.arch})", _gib(gpu.total_memory)]
    if gpu.free_memory is not None:
        parts[-1] += f" ({_gib(gpu.free_memory)} free)"
    parts.append("bf16" if gpu.bf16 else "no bf16")
    if gpu.tf32:
        parts.append("tf32")
    if gpu.supported_by_build is False:
        parts.append("NOT SUPPORTED by this torch build")
    return ", ".join(parts)


def _accelerator_lines(s: SystemProbe) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    kind = "ROCm" if s.torch_hip else "CUDA"
    if not (s.torch_cuda or s.torch_hip):
        rows.append(("CUDA/ROCm", "not in this torch build"))
    elif not s.cuda_available:
        why = f": {s.cuda_unavailable_reason}" if s.cuda_unavailable_reason else ""
        rows.append((kind, f"built in, but no usable GPU{why}"))
    for gpu in s.gpus:
        rows.append((f"GPU {gpu.index}", _gpu_line(gpu)))
    if s.driver is not None:
        text = s.driver.error or " ".join(
            part
            for part in (
                f"driver {s.driver.driver_version}" if s.driver.driver_version else "",
                f"({', '.join(s.driver.gpus)})" if s.driver.gpus else "",
            )
            if part
        )
        rows.append(("Driver", f"{s.driver.tool}: {text or 'no answer'}"))
    if s.system == "Darwin" or s.mps_built:
        mps = (
            "available"
            if s.mps_available
            else ("built, not available" if s.mps_built else "not built")
        )
        if s.mps_recommended_memory:
            mps += f" ({_gib(s.mps_recommended_memory)} recommended)"
        rows.append(("MPS", mps))
    if s.xpu_available:
        rows.append(("XPU", ", ".join(s.xpu_devices) + " (not used by mlsharp)"))
    return rows


def _backend_line(backend: BackendStatus) -> str:
    if not backend.installed:
        return f"{backend.name}: not installed ({backend.note})"
    devices = ", ".join(backend.devices) or "none"
    note = f"; {backend.note}" if backend.note else ""
    return f"{backend.name} {backend.version}: {devices}{note}"


def _checkpoint_line(report: DoctorReport) -> str:
    c = report.checkpoint
    where = f"{c.path} ({c.source})"
    if not c.present:
        return f"{where}: " + ("MISSING" if c.verified is False else "not downloaded yet")
    if c.verified:
        checks = " + ".join(c.checks)
        return f"{where}: OK ({_size(c.size)}, verified: {checks} for preset {report.preset})"
    return f"{where}: UNUSABLE (see below)"


def _autotune_lines(report: DoctorReport) -> list[str]:
    if not report.autotune:
        return ["none cached for this machine"]
    lines = []
    for t in report.autotune:
        speed = f", {t.speedup:.2f}x fp32" if t.speedup else ""
        which = "" if t.matches_checkpoint else " (another checkpoint/preset)"
        lines.append(
            f"{t.device}: {t.best}{speed} ({t.preset} at {t.resolution}px, {t.created_at}){which}"
        )
    return lines


def format_report(report: DoctorReport) -> str:
    """The human-readable report: aligned ``label  value`` rows, findings, next steps."""
    s = report.system
    rows: list[tuple[str, str]] = [
        ("System", f"{s.system} {s.machine}, Python {s.python}"),
        ("torch", _torch_line(s)),
        ("CPU", _cpu_line(s)),
        *_accelerator_lines(s),
        ("auto", f"--device auto uses {report.auto_device}"),
        ("Checkpoint", _checkpoint_line(report)),
    ]
    tuned = _autotune_lines(report)
    rows.append(("Autotune", tuned[0]))
    rows += [("", line) for line in tuned[1:]]
    if report.render:
        rows.append(("Render", report.render))
    for index, backend in enumerate(report.backends):
        rows.append(("Backends" if index == 0 else "", _backend_line(backend)))
    if report.auto_backend:
        rows.append(("--backend", report.auto_backend))
    lines = [f"{label:<{LABEL_WIDTH}} {value}".rstrip() for label, value in rows]
    lines.append("")
    for finding in report.findings:
        lines.append(f"{finding.level:<8} {finding.message}")
        if finding.fix:
            lines.append(f"{'':<8} fix: {finding.fix}")
    if report.checkpoint.verified is False:
        lines.append(f"{'problem':<8} the checkpoint cannot be used: {report.checkpoint.problem}")
    if report.next_steps:
        lines.append("")
        lines.append("Next:")
        lines += [f"  - {step}" for step in report.next_steps]
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    """Print the report (text or ``--json``); the exit status says whether all is well."""
    from mlsharp.config import Settings
    from mlsharp.runtime.doctor import examine

    # Settings for the preset ($MLSHARP_PRESET, config file); the checkpoint is located by
    # examine() itself so the report can say which setting chose it.
    settings = Settings.from_env(
        preset=args.preset,
        backend=getattr(args, "backend", None),
        backend_device=getattr(args, "backend_device", None),
    )
    report = examine(
        args.checkpoint,
        preset=settings.preset,
        backend=settings.backend,
        precision=settings.precision,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return report.exit_code
