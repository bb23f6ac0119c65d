"""Binning projected splats into screen tiles, each tile's list sorted front to back.

Every splat is paired with each tile its support box overlaps. The splats are first
ordered by depth, the pairs are generated in that order and then stably sorted by tile,
so each tile's slice of the pair list is already depth-sorted (one sort of the pairs
instead of one per tile, as in 3DGS's key sort).

MPS ignores ``stable=True`` (its sort is MPSGraph's, which gives no order among equal
keys), which would shuffle each tile's depth order. There the sort keys are made unique
instead, so any sort gives the one right order: ``tile * splats + depth rank`` (int64)
for the pairs, ``depth bits * splats + index`` for the depths. Elsewhere the narrow keys
and a stable sort are faster.
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


def depth_order(depths: torch.Tensor, *, unique_keys: bool) -> torch.Tensor:
    """Indices that sort positive ``depths`` nearest first, ties in index order."""
    # Positive floats' IEEE bit patterns sort like the values: the integer sort is faster.
    bits = depths.contiguous().view(torch.int32)
    if not unique_keys:
        return torch.sort(bits, stable=True).indices
    index = torch.arange(bits.numel(), device=bits.device)
    return torch.sort(bits.long() * bits.numel() + index).indices


def pair_keys(tile_id: torch.Tensor, pair_splat: torch.Tensor, splats: int) -> torch.Tensor:
    """Unique sort keys of (tile, splat) pairs: by tile, then by the splat's depth rank
    (a splat meets a tile at most once, so no two pairs share a key)."""
    return tile_id.long() * splats + pair_splat


def bin_splats(
    splats: Splats2D,
    width: int,
    height: int,
    tile_size: int = 16,
    *,
    unique_keys: bool | None = None,
) -> TileBins:
    """Sort ``splats`` by depth and bin them into ``tile_size`` pixel tiles.

    ``unique_keys`` (default: on MPS only) sorts by unique keys instead of relying on a
    stable sort (see the module docstring); the result is the same.
    """
    device = splats.means.device
    if unique_keys is None:
        unique_keys = device.type == "mps"
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    splats = splats.select(depth_order(splats.depths, unique_keys=unique_keys))

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
    tile_id = tile_y * tiles_x + tile_x
    if unique_keys:
        perm = torch.sort(pair_keys(tile_id, pair_splat, len(splats))).indices
        tile_count = torch.bincount(tile_id, minlength=n_tiles)
    else:
        # The narrowest integer type sorts fastest. Stable: within a tile the pairs keep
        # their (depth) generation order.
        key_type = torch.int16 if n_tiles <= torch.iinfo(torch.int16).max else torch.int32
        tile_id_sorted, perm = torch.sort(tile_id.to(key_type), stable=True)
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
