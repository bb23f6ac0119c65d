"""Tiled front-to-back alpha compositing of binned 2D splats (pure PyTorch).

Per pixel, with the splats that reach it sorted nearest first (as 3DGS / gsplat):

    alpha_i = min(0.99, o_i exp(-d_i² / 2)), skipped when below 1/255
    C = Σ_i c_i alpha_i T_i + T_end * background,   T_i = Π_{j<i} (1 - alpha_j)

and a pixel stops at the first splat that would bring its transmittance to 1e-4 or
below (that splat is not added), exactly like gsplat's kernel.

Vectorisation: tiles (``tile_size``² pixels) are processed in batches, and each tile's
depth-sorted list in chunks of ``chunk`` splats. For a batch, the exponent
``-d²/2 + ln o`` of every (pixel, splat) pair is one matrix product of fixed per-pixel
features ``[u², uv, v², u, v, 1]`` with six per-splat coefficients (scaled by
``log2 e`` so the fast ``exp2`` applies); coordinates are
relative to the tile's corner so the expanded quadratic stays accurate in float32. The
transmittance inside a chunk is a ``cumprod`` along the splat axis, carried between
chunks, and the colour sum is a batched matrix product. After each chunk the tiles whose
pixels have all stopped are dropped (early termination), and so are tiles whose lists
are exhausted. Padding slots get an exponent of -1e4, i.e. alpha 0.
"""

from __future__ import annotations

import math

import torch

from mlsharp.render.binning import TileBins
from mlsharp.render.scene import ALPHA_THRESHOLD

#: The largest alpha one splat reaches (3DGS; gsplat >= 1.6). gsplat 1.4-1.5 clamps at
#: 0.999 instead (see :func:`~mlsharp.render.gsplat_backend.gsplat_max_alpha`).
MAX_ALPHA = 0.99
TRANSMITTANCE_THRESHOLD = 1e-4
#: Splats per tile handled in one step.
DEFAULT_CHUNK = 32
#: Upper bound on the (tiles × pixels × splats) elements of one step's working tensors
#: (each float32 tensor of that size is 4 bytes per element; a few are alive at once),
#: per device type. On a CPU a small step stays in cache; on a GPU each step is a few
#: dozen kernel launches, so small steps leave it idle between launches (launch-bound):
#: there a step covers thousands of tiles (a few hundred MB of working memory).
BUDGETS = {"cpu": 1 << 19, "cuda": 1 << 24, "mps": 1 << 22}
DEFAULT_BUDGET = BUDGETS["cpu"]


def default_budget(device: torch.device) -> int:
    """The step budget for ``device`` (:data:`BUDGETS`; other devices: the CPU's)."""
    return BUDGETS.get(device.type, DEFAULT_BUDGET)


_LOG2_E = math.log2(math.e)


def _pixel_features(tile_size: int, device: torch.device) -> torch.Tensor:
    """(P, 6) features ``[u², uv, v², u, v, 1]`` of the pixel centres of a tile."""
    v, u = torch.meshgrid(
        torch.arange(tile_size, device=device, dtype=torch.float32) + 0.5,
        torch.arange(tile_size, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)


def composite(
    bins: TileBins,
    width: int,
    height: int,
    background: torch.Tensor,
    *,
    chunk: int = DEFAULT_CHUNK,
    budget: int | None = None,
    max_alpha: float = MAX_ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite ``bins`` into an image.

    Args:
        bins: the output of :func:`~mlsharp.render.binning.bin_splats` for this size.
        width, height: the image size in pixels.
        background: (3,) background colour, in the splats' colour space.
        chunk: splats per tile per step.
        budget: bound on tiles × pixels × splats per step (memory / cache footprint);
            ``None``: :func:`default_budget` of the bins' device.
        max_alpha: the clamp of each splat's alpha (:data:`MAX_ALPHA`).

    Returns:
        ``(image (H, W, 3), alpha (H, W))``: the composited colour (background included)
        and the accumulated opacity ``1 - T_end``.
    """
    state = _TileCompositor(bins, width, height, chunk, max_alpha)
    if budget is None:
        budget = default_budget(bins.pair_splats.device)
    batch_tiles = max(1, budget // (state.pixels * chunk))
    active = torch.nonzero(bins.tile_count > 0).squeeze(1)
    step = 0
    while active.numel():
        for first in range(0, active.numel(), batch_tiles):
            state.step(active[first : first + batch_tiles], step)
        step += 1
        # Keep tiles with splats left whose pixels have not all stopped.
        more = bins.tile_count[active] > step * chunk
        active = active[more & ~state.done[active].all(-1)]

    bg = background.to(device=state.color.device, dtype=torch.float32)
    color = state.color + state.transmittance[..., None] * bg
    image = _untile(color, bins, width, height)
    alpha_map = _untile(1.0 - state.transmittance[..., None], bins, width, height)[..., 0]
    return image, alpha_map


class _TileCompositor:
    """Per-tile compositing state (``transmittance``, ``done``, ``color``, each
    (tiles, P, ...)) and the step that advances a batch of tiles by one chunk."""

    def __init__(
        self, bins: TileBins, width: int, height: int, chunk: int, max_alpha: float
    ) -> None:
        device = bins.pair_splats.device
        self.max_alpha = max_alpha
        ts = bins.tile_size
        self.bins, self.chunk, self.pixels = bins, chunk, ts * ts
        n_tiles = bins.tiles_x * bins.tiles_y
        self.features = _pixel_features(ts, device)
        tile_ids = torch.arange(n_tiles, device=device)
        self.origin_x = ((tile_ids % bins.tiles_x) * ts).to(torch.float32)
        self.origin_y = (torch.div(tile_ids, bins.tiles_x, rounding_mode="floor") * ts).float()
        self.transmittance = torch.ones(n_tiles, self.pixels, device=device)
        self.color = torch.zeros(n_tiles, self.pixels, 3, device=device)
        # Pixels of edge tiles that fall outside the image start "done", so they never
        # keep a tile alive.
        px = self.origin_x[:, None] + self.features[None, :, 3]
        py = self.origin_y[:, None] + self.features[None, :, 4]
        self.done = (px > width) | (py > height)
        # One row per splat: [x, y, a, b, c, ln o, r, g, b], gathered once per step.
        splats = bins.splats
        log_opacity = torch.log(splats.opacities)[:, None]
        self.packed = torch.cat(
            [splats.means, splats.conics, log_opacity, splats.colors], dim=1
        ).contiguous()
        self.padding = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1e4], device=device)[None, :, None]
        self.one = torch.ones((), device=device)
        self.offsets = torch.arange(chunk, device=device)
        self.last_pair = max(0, bins.pair_splats.numel() - 1)

    def step(self, tiles: torch.Tensor, step: int) -> None:
        """Composite list slots ``step * chunk ...`` of ``tiles`` into the state."""
        bins, chunk, n_tiles = self.bins, self.chunk, tiles.numel()
        slot = step * chunk + self.offsets
        valid = slot[None, :] < bins.tile_count.index_select(0, tiles)[:, None]  # (B, L)
        pair = bins.tile_start.index_select(0, tiles)[:, None] + slot[None, :]
        ids = bins.pair_splats.index_select(0, pair.clamp_max(self.last_pair).reshape(-1))
        rows = self.packed.index_select(0, ids).reshape(n_tiles, chunk, -1)
        # Coefficients of -d²/2 + ln o as a quadratic in tile-local pixel coordinates.
        mx = rows[..., 0] - self.origin_x.index_select(0, tiles)[:, None]
        my = rows[..., 1] - self.origin_y.index_select(0, tiles)[:, None]
        a, b, c, log_opacity = rows[..., 2], rows[..., 3], rows[..., 4], rows[..., 5]
        lin_x = a * mx + b * my
        lin_y = b * mx + c * my
        const = log_opacity - 0.5 * (mx * lin_x + my * lin_y)
        coef = torch.stack([-0.5 * a, -b, -0.5 * c, lin_x, lin_y, const], dim=1)
        # In base 2: torch's exp2 is several times faster than exp on CPUs.
        coef = torch.where(valid[:, None, :], coef.mul_(_LOG2_E), self.padding)  # (B, 6, L)

        alpha = torch.matmul(self.features, coef).exp2_().clamp_max_(self.max_alpha)  # (B, P, L)
        torch.nn.functional.threshold_(alpha, ALPHA_THRESHOLD, 0.0)  # type: ignore[attr-defined]
        # cum[..., i] = Π_{j<i} (1 - alpha_j) for i = 0..L: exclusive and inclusive
        # products in one buffer, so neither needs a division or a shifted copy.
        cum = torch.empty(n_tiles, self.pixels, chunk + 1, device=alpha.device)
        cum[..., 0] = 1.0
        torch.sub(self.one, alpha, out=cum[..., 1:])
        cum.cumprod_(-1)
        tile_done = self.done.index_select(0, tiles)
        start_t = self.transmittance.index_select(0, tiles)
        start_t = start_t.masked_fill(tile_done, 0.0)
        # A splat adds iff start_t * inclusive > 1e-4 (stopped pixels: start_t = 0, never).
        adds = cum[..., 1:] > (TRANSMITTANCE_THRESHOLD / start_t)[:, :, None]
        weight = alpha.mul_(cum[..., :-1]).mul_(adds)
        color = torch.bmm(weight, rows[..., 6:]).mul_(start_t[..., None])
        self.color.index_add_(0, tiles, color)
        added = adds.sum(-1)  # the adding splats form a prefix of the chunk
        last = cum.gather(-1, added[..., None]).squeeze(-1) * start_t
        kept = torch.where(tile_done, self.transmittance.index_select(0, tiles), last)
        self.transmittance.index_copy_(0, tiles, kept)
        self.done.index_copy_(0, tiles, tile_done | (added < chunk))


def _untile(values: torch.Tensor, bins: TileBins, width: int, height: int) -> torch.Tensor:
    """(tiles, P, C) per-tile pixels -> (H, W, C) image."""
    ts = bins.tile_size
    channels = values.shape[-1]
    grid = values.reshape(bins.tiles_y, bins.tiles_x, ts, ts, channels).permute(0, 2, 1, 3, 4)
    return grid.reshape(bins.tiles_y * ts, bins.tiles_x * ts, channels)[:height, :width]
