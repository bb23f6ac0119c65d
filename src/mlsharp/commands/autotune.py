"""``mlsharp autotune``: measure the runtime options on this device, keep the fastest
accurate one in the cache (see :mod:`mlsharp.runtime.autotune`)."""

from __future__ import annotations

import argparse
import json

from mlsharp.runtime.accuracy import PROPERTIES, PropertyError
from mlsharp.runtime.autotune import AutotuneResult, Measurement

# How each property's error is shown in the table (value -> text).
_ERROR_FORMATS = {
    "positions": lambda v: f"{v * 100:.2g}%",
    "scales": lambda v: f"{v * 100:.2g}%",
    "rotations": lambda v: f"{v:.2g}°",
    "colors": lambda v: f"{v:.2g}",
    "opacities": lambda v: f"{v:.2g}",
}
_HEADERS = ("candidate", "time", "forward", "speed-up", "peak mem", *PROPERTIES, "verdict")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def _error(name: str, error: PropertyError | None) -> str:
    if error is None or error.count == 0:
        return "-"
    return _ERROR_FORMATS[name](error.p99)


def _verdict(result: AutotuneResult, m: Measurement) -> str:
    chosen = " <- chosen" if m.options == result.best and m.ran else ""
    if m.error is not None:
        return f"skipped: {m.error}"
    if m.reference:
        return "reference" + chosen
    if m.failures:
        return "fail: " + "; ".join(m.failures)
    return "pass" + chosen


def format_table(result: AutotuneResult) -> str:
    """One row per candidate: time, forward time, speed-up, peak memory, p99 errors, verdict."""
    rows = [_HEADERS]
    for m in result.measurements:
        speedup = result.speedup(m)
        rows.append(
            (
                m.options.label(),
                _seconds(m.median_s),
                _seconds(m.forward_median_s),
                f"{speedup:.2f}x" if speedup else "-",
                _mib(m.peak_memory),
                *(_error(name, m.errors.get(name)) for name in PROPERTIES),
                _verdict(result, m),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]
    kinds = sorted({m.memory_kind for m in result.measurements if m.memory_kind})
    lines.append(
        f"time: median of {result.runs} run(s) after {result.warmup} warm-up(s), end to end; "
        f"errors: 99th percentile vs fp32 (mean and max in --json); peak memory: "
        f"{', '.join(kinds) or 'unavailable'}"
    )
    return "\n".join(lines)


def run_autotune(args: argparse.Namespace) -> int:
    """Tune (or show the cached tuning) and print the table, or ``--json``."""
    from mlsharp.config import Settings
    from mlsharp.runtime.autotune import autotune

    settings = Settings.from_env(checkpoint=args.checkpoint, preset=args.preset, device=args.device)
    result = autotune(
        settings.checkpoint,
        preset=settings.preset,
        device=settings.device,
        resolution=args.resolution,
        runs=args.runs,
        warmup=args.warmup,
        image=args.image,
        force=args.force,
        compile=args.compile,
        download=not (args.offline or settings.offline),
        progress=not (args.quiet or args.json),
        backend=getattr(args, "backend", None),
        backend_device=getattr(args, "backend_device", None),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    key = result.key
    print(
        f"{key.device} ({key.device_name}), torch {key.torch}, preset {key.preset} at "
        f"{key.resolution}px, checkpoint sha256 {key.checkpoint_sha256[:12]}..., input "
        f"{result.image}"
    )
    print(format_table(result))
    best = result.best_measurement()
    speedup = result.speedup(best)
    faster = f" ({speedup:.2f}x fp32)" if speedup and not best.reference else ""
    print(f"chosen: {result.best.label()}{faster}")
    if result.from_cache:
        print(f"cached result from {result.created_at} ({result.path}); --force measures again")
    elif result.path is not None:
        print(f"cached in {result.path}")
    else:
        print("not cached: the cache directory is not writable")
    return 0
