"""Peak memory of decoding one image per Pillow mode, against ``imaging.decode_bytes``.

    python benchmarks/bench_decode_memory.py [--side 4000]

For each mode, a flat ``--side`` x ``--side`` image is encoded (PNG, TIFF, JPEG, WebP,
GIF: a few KB to MB on disk, which is the point) and decoded by ``load_image`` in a fresh
child process; the child's peak resident memory (``resource.getrusage``'s ``ru_maxrss``)
minus its resident memory just before decoding is the measured cost. The estimate
``decode_bytes`` (what ``max_decode_bytes`` is checked against) must stay above it.
Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = [
    ("RGB", "JPEG"),
    ("RGB", "JPEG-progressive"),
    ("RGB", "HEIF"),
    ("RGB", "PNG"),
    ("RGBA", "PNG"),
    ("RGB", "WEBP"),
    ("P", "PNG"),
    ("P", "GIF"),
    ("L", "PNG"),
    ("LA", "PNG"),
    ("1", "PNG"),
    ("I;16", "PNG"),
    ("I", "TIFF"),
    ("F", "TIFF"),
    ("CMYK", "TIFF"),
]

CHILD = """
import io, resource, sys
from PIL import Image
mode, fmt, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
fill = {"P": 3, "1": 1, "L": 7, "I;16": 1000, "I": 1000, "F": 0.5}.get(mode, (10, 20, 30, 40))
image = Image.new(mode, (side, side), fill if not isinstance(fill, tuple) else fill[: len(mode)])
if mode == "P":
    image.putpalette(list(range(256)) * 3)
buffer = io.BytesIO()
if fmt == "HEIF":
    import pillow_heif
    pillow_heif.register_heif_opener()
image.save(buffer, format=fmt.split("-")[0], progressive=fmt.endswith("progressive"))
data = buffer.getvalue()
del image, buffer
from mlsharp.imaging import load_image
try:
    from mlsharp.imaging import decode_bytes
except ImportError:  # an older mlsharp (to measure "before"): no estimate
    decode_bytes = lambda *args: 0

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

before = rss_kib()
decoded = load_image(data, max_pixels=None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
header = Image.open(io.BytesIO(data))
print(len(data), (peak - before) * 1024, decode_bytes(header.mode, side, side, header.format))
"""


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4000)
    args = parser.parse_args()
    pixels = args.side * args.side
    print(f"{platform.node()}, Python {platform.python_version()}, {args.side}² px per image\n")
    print("| mode | format | file | measured peak | B/px | estimate | B/px |")
    print("|---|---|---:|---:|---:|---:|---:|")
    failures = 0
    for mode, fmt in CASES:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, fmt, str(args.side)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout.split()
        size, measured, estimate = (int(v) for v in out)
        failures += 0 < estimate < measured
        print(
            f"| {mode} | {fmt} | {size / 1e3:,.0f} KB | {measured / 2**20:,.0f} MiB | "
            f"{measured / pixels:.1f} | {estimate / 2**20:,.0f} MiB | {estimate / pixels:.0f} |"
        )
    if failures:
        print(f"\n{failures} estimate(s) below the measured peak", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
