"""Output files of the commands: checks and errors of the single-file commands (``convert``,
``render``), and how ``predict`` and ``convert`` write scenes (:class:`SceneOutput`).

Both commands write one file the user names. Their rule (docs/cli.md): the file's folder
must exist (a typo in a path should not silently create folders; ``predict -o OUTDIR`` is
different, it names a folder to create). Whether the file can be written is checked
before the work starts, so a long render never ends in "permission denied", and any
``OSError`` of the write itself becomes one :class:`~mlsharp.errors.OutputError` line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsharp.errors import OutputError, OutputExists
from mlsharp.splat.density import Density


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


@dataclass(frozen=True)
class SceneOutput:
    """How ``predict`` and ``convert`` write scene files: format options and density.

    Attributes:
        frame: ``--frame``, for the formats that take one.
        spz_version: ``--spz-version`` (2, 3 or 4).
        glb_compression: ``--glb-compression`` (``none`` or ``spz``).
        density: ``--max-splats`` / ``--min-opacity``.
    """

    frame: str | None = None
    spz_version: int | None = None
    glb_compression: str | None = None
    density: Density = field(default_factory=Density)

    @classmethod
    def from_args(cls, args: Any) -> SceneOutput:
        """The options of parsed command-line arguments, checked.

        Raises:
            ConfigError: an unknown frame, or a density limit out of range.
        """
        frame = getattr(args, "frame", None)
        if frame is not None:
            from mlsharp.splat import check_frame

            check_frame(frame)
        return cls(
            frame=frame,
            spz_version=getattr(args, "spz_version", None),
            glb_compression=getattr(args, "glb_compression", None),
            density=Density.checked(
                getattr(args, "max_splats", None), getattr(args, "min_opacity", None)
            ),
        )

    def writer_options(self, fmt: str) -> dict[str, Any]:
        """Options for ``splat.write`` of ``fmt``: those it takes and that were given."""
        from mlsharp.formats import get

        given = {
            "frame": self.frame,
            "version": self.spz_version if fmt == "spz" else None,
            "compression": self.glb_compression if fmt == "glb" else None,
        }
        accepted = get(fmt).options
        return {key: value for key, value in given.items() if value is not None and key in accepted}


def describe_outputs(paths: Iterable[Path]) -> str:
    """``"a.ply (66.1 MB), a.sog (4.9 MB)"``: written files with their sizes."""
    return ", ".join(f"{path} ({_size(path)})" for path in paths)


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "?"
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
