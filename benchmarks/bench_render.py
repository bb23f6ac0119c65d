"""Seconds per frame of ``mlsharp.render`` on a scene shaped like the full model's output.

The scene is synthetic but has the model's structure: two layers of 768 × 768 splats
(1,179,648 in all) on the pixel grid of a 1536² photo, at plausible depths (a receding
floor and wall, 1.5-9 m, the second layer 0.2-1 m behind the first), flat splats about one
grid step wide, opaque front layer, half-transparent back layer, smooth colours.

    .venv/bin/python benchmarks/bench_render.py [--size 512x512] [--frames 3]
        [--trajectory orbit] [--device cpu] [--backend torch] [--tile-size 16] [--chunk 64]

Prints a table: the photo-viewpoint frame and ``frames`` trajectory frames, each with
its time, plus the mean (the first, warm-up frame is not counted in the mean).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

# As `mlsharp render` does (see mlsharp.commands.render): idle OpenMP threads sleep
# rather than spin; must be set before torch loads. Override by exporting it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from mlsharp.gaussians import Gaussians


def synthetic_scene(side: int = 768, layers: int = 2, photo: int = 1536, seed: int = 0):
    """A model-shaped scene: ``layers`` × ``side``² splats over a ``photo``² image."""
    rng = np.random.default_rng(seed)
    focal = 1500.0
    step = photo / side
    u = (np.arange(side) + 0.5) * step - photo / 2
    uu, vv = np.meshgrid(u, u)
    ndc_y = vv / (photo / 2)
    # Far wall at 9 m in the top part, a floor receding from 1.5 m at the bottom edge.
    base = np.where(ndc_y > 0.0, np.clip(1.5 / np.maximum(ndc_y, 1e-3) * 0.9, 1.5, 9.0), 9.0)
    base = base * (1.0 + 0.05 * np.sin(uu / 37.0) * np.cos(vv / 23.0))
    parts = []
    for layer in range(layers):
        z = base + layer * rng.uniform(0.2, 1.0, base.shape)
        pos = np.stack([uu / focal * z, vv / focal * z, z], -1).reshape(-1, 3)
        footprint = (z * step / focal).reshape(-1)
        scales = np.stack(
            [footprint * rng.uniform(0.6, 1.2, footprint.shape), footprint * 0.8, footprint * 0.1],
            -1,
        )
        angles = rng.uniform(0, np.pi, footprint.shape)
        rotations = np.stack(
            [np.cos(angles / 2), np.zeros_like(angles), np.zeros_like(angles), np.sin(angles / 2)],
            -1,
        )
        hue = np.stack([np.sin(uu / 90.0), np.cos(vv / 70.0), np.sin((uu + vv) / 50.0)], -1)
        colors = (0.35 + 0.3 * hue).reshape(-1, 3) ** 2.2
        opacity = rng.uniform(0.85, 0.99, footprint.shape) if layer == 0 else np.full_like(z, 0.5)
        parts.append((pos, scales, rotations, colors, opacity.reshape(-1)))
    stacked = [np.concatenate(arrays).astype(np.float32) for arrays in zip(*parts, strict=True)]
    return Gaussians(*stacked, focal_px=focal, image_size=(photo, photo))


def main() -> None:
    """Run the benchmark and print the table."""
    from mlsharp.render import make_trajectory, render_frames
    from mlsharp.render.camera import camera_at

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--trajectory", default="orbit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    start = time.perf_counter()
    scene = synthetic_scene()
    print(f"scene: {len(scene):,} splats (built in {time.perf_counter() - start:.1f} s)")
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
        f"device {args.device}, backend {args.backend}"
    )
    cameras = [camera_at(scene, (width, height))]
    cameras += make_trajectory(scene, args.trajectory, args.frames, (width, height))
    knobs = {k: v for k, v in (("tile_size", args.tile_size), ("chunk", args.chunk)) if v}
    times, cpu_times = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    frames = render_frames(scene, cameras, backend=args.backend, device=args.device, **knobs)
    print(f"| frame | camera | {width}x{height} wall s | process CPU s |")
    print("|---|---|---|---|")
    for index, _ in enumerate(frames):
        now, cpu_now = time.perf_counter(), time.process_time()
        times.append(now - start)
        cpu_times.append(cpu_now - cpu_start)
        start, cpu_start = now, cpu_now
        label = "photo (+ upload)" if index == 0 else f"{args.trajectory} {index}/{args.frames}"
        print(f"| {index} | {label} | {times[-1]:.2f} | {cpu_times[-1]:.2f} |")
    counted = times[1:] or times
    counted_cpu = cpu_times[1:] or cpu_times
    print(
        f"mean over trajectory frames: {sum(counted) / len(counted):.2f} s/frame wall, "
        f"{sum(counted_cpu) / len(counted_cpu):.2f} s CPU; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
