"""File size, write time and read time of every scene format for a SHARP-sized scene.

Run: ``.venv/bin/python benchmarks/bench_formats.py [--max-splats 300000] [--photo PATH]``

The scene has SHARP's shape, 2 layers x 768 x 768 = 1,179,648 splats, built from a real
photo (tests/data/parity/images/astronaut.jpg by default, resized to 768 x 768): the first
layer is the photo on a gently curved surface 1.5-3 m away, the second a dimmer copy 1 m
behind it; scales follow the pixel footprint, and rotations, opacities and a 1 % share of
"far" background splats 1-5 km away (as the trained network puts them) are noise with a
fixed seed. Prints a Markdown table: format, bytes, ratio to .ply, write and read seconds.
Times are wall-clock (time.perf_counter) on this machine; say its load when quoting them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mlsharp import formats, splat
from mlsharp.gaussians import Gaussians
from mlsharp.splat.density import Density

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "parity" / "images"
SIDE = 768


def photo_scene(photo: Path, side: int = SIDE, seed: int = 0) -> Gaussians:
    """A SHARP-shaped scene (2 x side x side splats) coloured by ``photo``."""
    rng = np.random.default_rng(seed)
    with Image.open(photo) as image:
        rgb = np.asarray(image.convert("RGB").resize((side, side)), dtype=np.float32) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    focal = 0.9 * side
    u, v = np.meshgrid(np.arange(side) + 0.5, np.arange(side) + 0.5)
    u, v = u.ravel(), v.ravel()
    front = 1.5 + 1.5 * (v / side) + 0.2 * np.sin(u / 40.0) + rng.normal(0, 0.02, u.size)
    back = front + 1.0
    far = rng.random(u.size) < 0.01
    back[far] = rng.uniform(1000.0, 5000.0, far.sum())
    z = np.concatenate([front, back])
    uu, vv = np.tile(u, 2), np.tile(v, 2)
    positions = np.stack([(uu - side / 2) / focal * z, (vv - side / 2) / focal * z, z], axis=1)
    footprint = z / focal
    scales = footprint[:, None] * np.exp(rng.normal(0.0, 0.3, (z.size, 3)))
    quats = rng.normal(size=(z.size, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    colors = np.concatenate([linear.reshape(-1, 3), 0.6 * linear.reshape(-1, 3)])
    opacities = np.clip(rng.beta(5.0, 1.5, z.size), 0.01, 0.999)
    return Gaussians(
        positions=positions.astype(np.float32),
        scales=np.sort(scales, axis=1)[:, ::-1].astype(np.float32),
        rotations=quats.astype(np.float32),
        colors=colors.astype(np.float32),
        opacities=opacities.astype(np.float32),
        focal_px=float(focal),
        image_size=(side, side),
    )


#: (label, format, writer options) of each row.
ROWS = [
    ("ply", "ply", {}),
    ("ply-standard", "ply-standard", {}),
    ("splat", "splat", {}),
    ("spz (v2, default)", "spz", {}),
    ("spz --spz-version 3", "spz", {"version": 3}),
    ("spz --spz-version 4", "spz", {"version": 4}),
    ("sog", "sog", {}),
    ("glb", "glb", {}),
    ("glb --glb-compression spz", "glb", {"compression": "spz"}),
]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=PHOTO / "astronaut.jpg")
    parser.add_argument("--max-splats", type=int, help="thin the scene out first")
    args = parser.parse_args()
    scene = photo_scene(args.photo)
    if args.max_splats:
        start = time.perf_counter()
        scene = splat.reduce_density(scene, Density.checked(args.max_splats))
        print(f"--max-splats {args.max_splats}: {time.perf_counter() - start:.2f} s")
    print(f"{len(scene):,} splats; load average {os.getloadavg()[0]:.1f}")
    print("| format | bytes | vs .ply | write | read |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for label, fmt, options in ROWS:
            path = Path(tmp) / f"scene{formats.get(fmt).suffix}"
            start = time.perf_counter()
            splat.write(scene, path, fmt, **options)
            written = time.perf_counter() - start
            start = time.perf_counter()
            splat.read(path)
            read = time.perf_counter() - start
            size = path.stat().st_size
            reference = reference or size
            ratio = f"{reference / size:.1f}x smaller" if size < 0.95 * reference else "1.0x"
            print(f"| `{label}` | {size:,} | {ratio} | {written:.1f} s | {read:.1f} s |")
            path.unlink()


if __name__ == "__main__":
    main()
