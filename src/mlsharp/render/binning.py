"""Binning projected splats into screen tiles, each tile's list sorted front to back.

Every splat is paired with each tile its support box overlaps. The splats are first
ordered by depth, the pairs are generated in that order and then stably sorted by tile,
so each tile's slice of the pair list is already depth-sorted (one sort of the pairs
instead of one per tile, as in 3DGS's key sort).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mlsharp.render.project import Splats2D


@dataclass
class TileBins:
    """Per-tile, depth-sorted splat lists over a ``tiles_x`` × ``tiles_y`` grid.

    Attributes:
        splats: the projected splats, sorted by depth (nearest first).
        pair_splats: (K,) index into ``splats`` of every (tile, splat) pair, grouped by tile
            (row-major tile order) and nearest first within a tile.
        tile_start: (tiles,) offset of each tile's run in ``pair_splats``.
        tile_count: (tiles,) length of each tile's run.
        tile_size: tile side in pixels.
        tiles_x, tiles_y: grid size.
    """

    splats: Splats2D
    pair_splats: torch.Tensor
    tile_start: torch.Tensor
    tile_count: torch.Tensor
    tile_size: int
    tiles_x: int
    tiles_y: int


def tile_ranges(
    splats: Splats2D, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inclusive tile ranges ``(x0, x1, y0, y1)`` covered by each splat's support box.

    Pixel ``i`` (centre ``i + 0.5``) is inside ``[m - e, m + e]`` iff
    ``m - e - 0.5 <= i <= m + e - 0.5``; its tile is ``i // tile_size``.
    """
    lo = torch.floor((splats.means - splats.extents - 0.5) / tile_size)
    hi = torch.floor((splats.means + splats.extents - 0.5) / tile_size)
    x0 = lo[:, 0].clamp(0, tiles_x - 1).long()
    x1 = hi[:, 0].clamp(0, tiles_x - 1).long()
    y0 = lo[:, 1].clamp(0, tiles_y - 1).long()
    y1 = hi[:, 1].clamp(0, tiles_y - 1).long()
    return x0, x1, y0, y1


def bin_splats(splats: Splats2D, width: int, height: int, tile_size: int = 16) -> TileBins:
    """Sort ``splats`` by depth and bin them into ``tile_size`` pixel tiles."""
    device = splats.means.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    # Depths are positive floats (culled at the near plane), whose IEEE bit patterns sort
    # like the values: sorting them as int32 uses the much faster integer sort.
    order = torch.sort(splats.depths.contiguous().view(torch.int32), stable=True).indices
    splats = splats.select(order)

    x0, x1, y0, y1 = tile_ranges(splats, tile_size, tiles_x, tiles_y)
    span_x = x1 - x0 + 1
    counts = span_x * (y1 - y0 + 1)
    total = int(counts.sum())
    pair_splat = torch.repeat_interleave(torch.arange(len(splats), device=device), counts)
    first_pair = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - first_pair.index_select(0, pair_splat)
    span = span_x.index_select(0, pair_splat)
    row = torch.div(local, span, rounding_mode="floor")
    tile_x = x0.index_select(0, pair_splat) + (local - row * span)
    tile_y = y0.index_select(0, pair_splat) + row
    # The narrowest integer type sorts fastest. Stable: within a tile the pairs keep
    # their (depth) generation order.
    key_type = torch.int16 if n_tiles <= torch.iinfo(torch.int16).max else torch.int32
    tile_id = (tile_y * tiles_x + tile_x).to(key_type)
    tile_id_sorted, perm = torch.sort(tile_id, stable=True)
    tile_count = torch.bincount(tile_id_sorted.long(), minlength=n_tiles)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TileBins(
        splats=splats,
        pair_splats=pair_splat.index_select(0, perm),
        tile_start=tile_start,
        tile_count=tile_count,
        tile_size=tile_size,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
    )
