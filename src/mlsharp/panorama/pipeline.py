"""A 360° panorama in, one scene out: detect, cut into views, predict them, merge.

    LoadedImage --panorama_kind--> equirectangular | cubemap | None (an ordinary photo)
                --cut views (views.py)--> LoadedImages --predict_many--> Gaussians per view
                --reconcile_scales + merge_views (merge.py)--> one Gaussians

The predictor is anything with the :class:`~mlsharp.engine.Engine`'s ``predict_many`` and
``suggested_batch_size`` (the engine itself in the CLI, the service's
:class:`~mlsharp.runtime.batcher.Batcher`), so batching and the out-of-memory fallback
are the predictor's. The views go in batches of the suggested size; ``progress`` hears of
each batch as it starts (the front ends show "view 3/6"). NumPy only: torch stays in the
predictor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any, Literal, Protocol

from mlsharp.errors import NotAPanorama
from mlsharp.gaussians import Gaussians
from mlsharp.imaging import LoadedImage, focal_length_px
from mlsharp.panorama.merge import merge_views, reconcile_scales
from mlsharp.panorama.projection import (
    CROSS_ASPECT,
    EQUIRECT_ASPECT,
    MIN_PANORAMA_SIDE,
    CubeMap,
    Equirectangular,
    PanoramaSource,
    aspect_matches,
    cross_problem,
)
from mlsharp.panorama.views import (
    DEFAULT_LAYOUT,
    PanoramaLayout,
    cut_view,
    layout_views,
    view_side,
)

PanoramaKind = Literal["equirectangular", "cubemap"]
#: ``progress(stage, fraction)``: ``("views", 0)`` before cutting, ``("view 3/6", 2/6)`` as
#: the batch starting with view 3 of 6 starts, ``("merge", 1)`` before merging.
Progress = Callable[[str, float], None]


class ViewPredictor(Protocol):
    """What :func:`predict_panorama` needs of an engine."""

    def predict_many(
        self,
        images: Sequence[LoadedImage],
        *,
        on_stage: Callable[[str], None] | None = None,
        batch_size: int | None = None,
    ) -> list[Gaussians]: ...

    def suggested_batch_size(self) -> int: ...


def _shape_text(image: LoadedImage) -> str:
    width, height = image.width, image.height
    return f"{width}x{height} (aspect {width / height:.2f}:1)"


def panorama_kind(image: LoadedImage, requested: bool | None) -> PanoramaKind | None:
    """Whether to treat ``image`` as a 360° panorama, and which kind.

    ``requested`` is the user's choice: ``True`` (``--panorama`` / ``panorama=true``), ``False``
    (never) or ``None`` (when the file's GPano XMP says ``equirectangular``). A 2:1 image is
    equirectangular; with ``requested=True`` a 4:3 horizontal cross with six blank cells is
    a cube map.

    Raises:
        NotAPanorama: a panorama was asked for (or the XMP claims one) but the image does
            not have the shape of one.
    """
    if requested is False:
        return None
    tagged = image.projection == "equirectangular"
    if requested is None and not tagged:
        return None
    if aspect_matches(image.width, image.height, EQUIRECT_ASPECT):
        if image.height < MIN_PANORAMA_SIDE:
            raise NotAPanorama(
                f"{image.name} is {_shape_text(image)}: too small for a panorama "
                f"(at least {2 * MIN_PANORAMA_SIDE}x{MIN_PANORAMA_SIDE})"
            )
        return "equirectangular"
    if requested and aspect_matches(image.width, image.height, CROSS_ASPECT):
        problem = cross_problem(image.pixels)
        if problem is None:
            return "cubemap"
        raise NotAPanorama(
            f"{image.name} is {_shape_text(image)}, not a panorama: a 360° panorama is a 2:1 "
            f"equirectangular image, and as a 4:3 cube-map cross {problem}"
        )
    if requested:
        raise NotAPanorama(
            f"{image.name} is {_shape_text(image)}, not a panorama: a 360° panorama is a 2:1 "
            "equirectangular image (or a 4:3 cube-map cross)"
        )
    raise NotAPanorama(
        f"{image.name} says it is an equirectangular panorama (GPano XMP) but is "
        f"{_shape_text(image)}; only full 360x180° panoramas (2:1) are supported; predict it "
        "as a photo with --no-panorama (API: panorama=false)"
    )


def panorama_source(image: LoadedImage, kind: PanoramaKind) -> PanoramaSource:
    """The panorama of ``image`` as a function of direction."""
    if kind == "cubemap":
        return CubeMap.from_cross(image.pixels)
    return Equirectangular(image.pixels)


def cut_views(
    image: LoadedImage, kind: PanoramaKind, layout: PanoramaLayout, max_side: int
) -> list[LoadedImage]:
    """The layout's perspective views of ``image``, as photos for the engine."""
    source = panorama_source(image, kind)
    side = view_side(source, layout.fov_degrees, max_side)
    views = []
    for view in layout_views(layout):
        focal = view.focal_px(side)
        views.append(
            LoadedImage(
                pixels=cut_view(source, view, side, image.pixels.dtype),
                focal_px=focal,
                focal_mm_35=focal / focal_length_px(1.0, side, side),
                focal_source="panorama",
                name=f"{image.name} [{view.name}]",
                format=image.format,
            )
        )
    return views


def _predict_views(
    predictor: ViewPredictor, images: list[LoadedImage], progress: Progress
) -> list[Gaussians]:
    results: list[Gaussians] = []
    total = len(images)
    while len(results) < total:
        done = len(results)
        chunk = images[done : done + max(1, int(predictor.suggested_batch_size()))]
        progress(f"view {done + 1}/{total}", done / total)
        results += predictor.predict_many(chunk, batch_size=len(chunk))
    return results


def _summed_timings(results: list[Gaussians], extra: dict[str, float]) -> Any:
    """The views' stage timings added up (the engine's ``StageTimes``), plus ``extra``."""
    first = results[0].metadata.get("timings")
    if first is None or not is_dataclass(first) or isinstance(first, type):
        return None
    totals = {
        f.name: sum(float(getattr(r.metadata["timings"], f.name)) for r in results)
        for f in fields(first)
        if f.name != "extra"
    }
    return replace(first, **totals, extra=dict(extra))


def predict_panorama(
    predictor: ViewPredictor,
    image: LoadedImage,
    *,
    kind: PanoramaKind = "equirectangular",
    layout: PanoramaLayout = DEFAULT_LAYOUT,
    max_side: int,
    progress: Progress | None = None,
) -> Gaussians:
    """Predict one scene for the panorama ``image`` (see the module docstring).

    Args:
        predictor: the engine (or batcher) that predicts the views.
        image: the decoded panorama.
        kind: its projection (from :func:`panorama_kind`).
        layout: how it is cut into views.
        max_side: the largest view side (the engine's internal resolution).
        progress: called as the work advances (see :data:`Progress`).

    Returns:
        The merged scene in the panorama's frame (OpenCV axes, camera at the origin, +z
        forward). ``metadata["panorama"]`` describes the layout, the per-view depth scales
        and the seam residuals; ``metadata["timings"]`` holds the views' stage times added
        up, with the cut and merge times in its ``extra``.
    """
    report = progress or (lambda stage, fraction: None)
    report("views", 0.0)
    start = time.perf_counter()
    images = cut_views(image, kind, layout, max_side)
    cut_seconds = time.perf_counter() - start
    results = _predict_views(predictor, images, report)
    report("merge", 1.0)
    start = time.perf_counter()
    views = layout_views(layout)
    scales, seams = reconcile_scales(views, results)
    source = panorama_source(image, kind)
    merged = merge_views(views, results, scales=scales, pixels_per_radian=source.pixels_per_radian)
    merge_seconds = time.perf_counter() - start
    merged.metadata["source"] = image.name
    merged.metadata["panorama"] = {
        "projection": kind,
        "size": [image.width, image.height],
        "layout": {"ring": layout.ring, "fov_degrees": layout.fov_degrees},
        "views": [
            {
                "name": view.name,
                "yaw_degrees": view.yaw_degrees,
                "pitch_degrees": view.pitch_degrees,
                "side": images[index].width,
                "focal_px": round(images[index].focal_px, 4),
                "depth_scale": round(float(scales[index]), 6),
                "kept": merged.metadata["views_kept"][view.name],
            }
            for index, view in enumerate(views)
        ],
        "seams": seams.as_dict() if seams is not None else None,
    }
    del merged.metadata["views_kept"]
    timings = _summed_timings(
        results, {"views": float(len(views)), "cut": cut_seconds, "merge": merge_seconds}
    )
    if timings is not None:
        merged.metadata["timings"] = timings
    return merged


def layout_id(layout: PanoramaLayout = DEFAULT_LAYOUT) -> str:
    """A short name of the cut and merge, for cache keys (changes when the result would)."""
    return f"panorama-{layout.ring}x{layout.fov_degrees:g}-v1"


def cache_model_id(model_id: str, panorama: bool) -> str:
    """The model id a result is cached under: a panorama's scene is another result than
    the same pixels predicted as one photo, and depends on the view layout."""
    return f"{model_id}+{layout_id()}" if panorama else model_id


__all__ = [
    "PanoramaKind",
    "Progress",
    "ViewPredictor",
    "cache_model_id",
    "cut_views",
    "layout_id",
    "panorama_kind",
    "panorama_source",
    "predict_panorama",
]
