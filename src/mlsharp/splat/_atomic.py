"""Atomic file writes shared by the splat writers.

A writer streams its bytes into ``<dest>.tmp-<random>`` in the destination directory,
flushes and fsyncs it, then renames it over ``dest`` with :func:`os.replace`. Readers never
see a half-written file, an existing ``dest`` is only replaced once the new file is
complete, and on any failure (including ``KeyboardInterrupt``) the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np

Chunk = bytes | bytearray | memoryview | np.ndarray


def temp_path_for(dest: Path) -> Path:
    """Return a fresh temporary path next to ``dest`` (``<name>.tmp-<16 hex digits>``)."""
    return dest.with_name(f"{dest.name}.tmp-{secrets.token_hex(8)}")


def _as_bytes(chunk: Chunk) -> bytes | bytearray | memoryview:
    """Return a zero-copy byte view of ``chunk`` (arrays are written in memory order)."""
    if isinstance(chunk, np.ndarray):
        array = np.ascontiguousarray(chunk)
        return memoryview(array.reshape(-1).view(np.uint8))
    return chunk


def _fsync_directory(directory: Path) -> None:
    """Best-effort fsync of a directory so a rename survives a crash (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(dest: str | os.PathLike[str], chunks: Iterable[Chunk]) -> Path:
    """Write ``chunks`` (bytes or C-ordered NumPy arrays) to ``dest`` atomically.

    The parent directory is created if needed. The data goes to a temporary file in the
    same directory, which is flushed, fsynced and then renamed over ``dest``. If anything
    fails (including while ``chunks`` is being produced) the temporary file is removed, the
    exception propagates and a previously existing ``dest`` is left untouched.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        # "xb": never clobber an existing file; normal permissions (umask), unlike mkstemp.
        with open(tmp, "xb") as fh:
            for chunk in chunks:
                fh.write(_as_bytes(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(dest.parent)
    return dest
