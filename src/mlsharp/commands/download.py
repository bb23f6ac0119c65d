"""``mlsharp download``: fetch the checkpoint into the cache before going offline."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_download(args: argparse.Namespace) -> int:
    """Download Apple's checkpoint (or ``--url``) into the cache; prints its path."""
    from mlsharp import weights

    if args.url:
        name = Path(args.url.split("?", 1)[0]).name or weights.DEFAULT_CHECKPOINT_NAME
        path = weights.download(args.url, weights.cache_dir() / name, progress=not args.quiet)
    else:
        path = weights.download_checkpoint(progress=not args.quiet)
    print(path)
    return 0
