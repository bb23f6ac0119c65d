"""360° panoramas in, one scene out (NumPy only; the engine does the network).

    kind = panorama_kind(image, requested=None)   # from GPano XMP, or --panorama
    scene = predict_panorama(engine, image, kind=kind, max_side=engine.internal_resolution)

Modules: ``projection`` (the orientation contract, equirectangular and cube-map sampling),
``views`` (the view layout and cutting), ``merge`` (depth-scale reconciliation, one view
per direction, rotation into the panorama's frame), ``pipeline`` (the whole path).
docs/panorama.md describes the layout, the merge and the orientation contract.
"""

from mlsharp.panorama.merge import SeamReport, merge_views, reconcile_scales
from mlsharp.panorama.pipeline import (
    PanoramaKind,
    ViewPredictor,
    cache_model_id,
    cut_views,
    layout_id,
    panorama_kind,
    predict_panorama,
)
from mlsharp.panorama.projection import (
    CubeMap,
    Equirectangular,
    equirect_coordinates,
    equirect_directions,
)
from mlsharp.panorama.views import PanoramaLayout, ViewSpec, layout_views

__all__ = [
    "CubeMap",
    "Equirectangular",
    "PanoramaKind",
    "PanoramaLayout",
    "SeamReport",
    "ViewPredictor",
    "ViewSpec",
    "cache_model_id",
    "cut_views",
    "equirect_coordinates",
    "equirect_directions",
    "layout_id",
    "layout_views",
    "merge_views",
    "panorama_kind",
    "predict_panorama",
    "reconcile_scales",
]
