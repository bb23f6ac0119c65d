"""Output files of the single-file commands (``convert``, ``render``): checks and errors.

Both commands write one file the user names. Their rule (docs/cli.md): the file's folder
must exist (a typo in a path should not silently create folders; ``predict -o OUTDIR`` is
different, it names a folder to create). Whether the file can be written is checked
before the work starts, so a long render never ends in "permission denied", and any
``OSError`` of the write itself becomes one :class:`~mlsharp.errors.OutputError` line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mlsharp.errors import OutputError, OutputExists


def describe(error: OSError) -> str:
    """The reason of ``error`` as a short phrase (``strerror``, not Python's repr)."""
    return error.strerror or str(error) or type(error).__name__


def check_output_file(dest: Path, *, overwrite: bool) -> None:
    """Raise a one-line error unless ``dest`` can be written as a new (or replaced) file.

    Checks, in order: ``dest`` exists (needs ``overwrite``), is a folder, its folder is
    missing or not a folder, and finally that a file can be created next to it (a
    permission test by creating and removing an empty temporary file, which also catches
    read-only file systems and pseudo-file systems such as ``/proc``).

    Raises:
        OutputExists: ``dest`` exists and ``overwrite`` is false.
        OutputError: ``dest`` is a folder, or its folder cannot take a new file.
    """
    if dest.is_dir():
        raise OutputError(f"cannot write {dest}: it is a folder")
    if dest.exists() and not overwrite:
        raise OutputExists(f"{dest} exists (use --overwrite to replace it)")
    parent = dest.parent
    if not parent.exists():
        raise OutputError(f"cannot write {dest}: folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise OutputError(f"cannot write {dest}: {parent} is not a folder")
    probe = parent / f".{dest.name}.probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise OutputError(f"cannot write {dest}: {describe(error)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@contextlib.contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``dest`` into one :class:`OutputError`."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"cannot write {dest}: {describe(error)}") from None
