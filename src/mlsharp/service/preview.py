"""The thumbnail of every finished job: ``<stem>.preview.png``, output name ``preview``.

The scene is rendered from the photo's own viewpoint (:func:`mlsharp.render.render_preview`)
on the CPU right after the requested formats are written, so the page's history can show
what each job produced. It is an extra output, never one of the job's ``formats``: it is
recorded in ``job.outputs`` and stored in the result cache beside them. Rendering it is
best effort; a failure is logged and the job simply has no preview.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("mlsharp.worker")

#: The output name of the thumbnail in ``job.outputs`` and ``/result?format=``.
PREVIEW_FORMAT = "preview"
#: What follows the input's stem in the thumbnail's file name.
PREVIEW_SUFFIX = ".preview.png"
#: Media type the result endpoint serves the thumbnail with.
PREVIEW_MEDIA_TYPE = "image/png"
#: Longest side of the thumbnail in pixels (the other follows the photo's aspect).
PREVIEW_MAX_SIDE = 320


def media_type(fmt: str) -> str:
    """The HTTP media type of output ``fmt`` (a scene format or ``preview``)."""
    if fmt == PREVIEW_FORMAT:
        return PREVIEW_MEDIA_TYPE
    from mlsharp.splat import MEDIA_TYPES

    return MEDIA_TYPES.get(fmt, "application/octet-stream")


def cache_formats(settings: Any, formats: Sequence[str]) -> list[str]:
    """What to ask the result cache for: the job's formats, plus the preview if enabled.

    Asking for the preview in the same lookup keeps one hit or miss per job. An entry
    stored without a preview (previews were off, or rendering failed) is then a miss: the
    job is computed again and the new files, preview included, merge into that entry.
    """
    return [*formats, PREVIEW_FORMAT] if settings.previews else list(formats)


def write_preview(gaussians: Any, dest: Path) -> bool:
    """Render ``gaussians`` from the photo's viewpoint to the PNG ``dest``; True if written.

    Never raises (bar interrupts): a preview is a convenience, and a failure to render one
    must not fail a job whose scene files are already written.
    """
    try:
        from mlsharp.render import render_preview, write_png

        image = render_preview(gaussians, max_side=PREVIEW_MAX_SIDE, device="cpu")
        write_png(image, dest)  # atomic
    except Exception:  # best effort by design (see the docstring)
        log.warning("could not render the preview %s", dest, exc_info=True)
        return False
    return True
