"""Atomic file writes: a file at its final path is always complete.

Data goes to ``<dest>.tmp-<random>`` in the destination directory, is fsynced, then
renamed over ``dest`` with :func:`os.replace`. Readers never see a half-written file, an
existing ``dest`` is only replaced once the new file is complete, and on any failure
(including ``KeyboardInterrupt``) the temporary file is removed. Every writer of the
package (splats, checkpoints) goes through :func:`atomic_path`; the resumable download in
``mlsharp.weights`` keeps its own ``.part`` file but shares :func:`fsync_directory`.
:func:`link_or_copy` puts an existing file at a new path the same way (a hard link when
it can, a copy otherwise).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

Chunk = bytes | bytearray | memoryview | np.ndarray


def temp_path_for(dest: Path) -> Path:
    """Return a fresh temporary path next to ``dest`` (``<name>.tmp-<16 hex digits>``)."""
    return dest.with_name(f"{dest.name}.tmp-{secrets.token_hex(8)}")


def fsync_directory(directory: Path) -> None:
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


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``dest``.

    The parent directory is created if needed. The caller creates the temporary file
    itself (e.g. ``torch.save(obj, tmp)``), so the usual umask permissions apply. If the
    block raises, the temporary file is removed, the exception propagates and a previously
    existing ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_directory(dest.parent)


def _as_bytes(chunk: Chunk) -> bytes | bytearray | memoryview:
    """Return a zero-copy byte view of ``chunk`` (arrays are written in memory order)."""
    if isinstance(chunk, np.ndarray):
        array = np.ascontiguousarray(chunk)
        return array.reshape(-1).view(np.uint8).data
    return chunk


def atomic_write(dest: str | os.PathLike[str], chunks: Iterable[Chunk]) -> Path:
    """Write ``chunks`` (bytes or C-ordered NumPy arrays) to ``dest`` atomically.

    Failures while ``chunks`` is being produced leave no file behind, as with any
    :func:`atomic_path` block.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(dest) as tmp, open(tmp, "xb") as fh:
        # "xb": never clobber an existing file; normal permissions (umask), unlike mkstemp.
        for chunk in chunks:
            fh.write(_as_bytes(chunk))
    return Path(dest)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` if possible, else a copy of it.

    ``dst`` appears atomically: the link or copy is made under a temporary name next to
    it, then renamed over it, so an existing ``dst`` is replaced, never rewritten. Parent
    folders are created. Nothing happens when ``dst`` already is ``src``.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem, or links unsupported
            shutil.copyfile(src, tmp)
            _fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(dst.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
