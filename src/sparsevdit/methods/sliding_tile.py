"""Sliding Tile Attention (FastVideo's STA): windows of whole tiles in a tile-major token order.

Tokens are reordered tile-major (``layout.tile_major_TxHxW``: tiles of ``tile`` = (t, h, w) tokens,
frame-major inside a tile, edge tiles clipped). A query tile keeps the key tiles of a ``window``
= (kt, kh, kw) tiles around it. Per axis the window's centre is ``clamp(query_tile, k // 2,
n - 1 - k // 2)`` over the n tiles of that axis, so an edge query gets a shifted full window. A key
tile is kept when ``|centre - key_tile| <= k // 2``: an even k covers k + 1 tiles, as in the released
code. Text rows and columns are dense: video queries see all text, text queries see everything.

When the tile volume is a multiple of the block size and the grid divides by the tile, every block
lies in one tile and the block mask is exactly the tile rule. Otherwise a block spans two tiles and,
as for every pattern, it is kept when any of its token pairs is (docs/patterns.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import TokenLayout, tile_major_name
from ..patterns.base import BlockGeometry, BlockPattern, num_blocks
from .base import Method, MethodError, MethodParams, register_method


def _triple(method: str, key: str, value: object) -> tuple[int, int, int]:
    if isinstance(value, list):
        value = tuple(value)
    if (not isinstance(value, tuple) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise MethodError(f"method {method!r}: {key} must be three positive integers (t, h, w), got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class SlidingTileParams(MethodParams):
    """Sliding Tile Attention's parameters.

    tile: tokens per tile along (frames, rows, columns); FastVideo's tile is (6, 8, 8) = 384 tokens.
    window: tiles per window along (frames, rows, columns); HunyuanVideo's released runs mostly use (5, 3, 3).
    """

    method: ClassVar[str] = "sliding_tile"

    tile: tuple[int, int, int] = (6, 8, 8)
    window: tuple[int, int, int] = (3, 3, 3)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tile", _triple(self.method, "tile", self.tile))
        object.__setattr__(self, "window", _triple(self.method, "window", self.window))


def tile_for_block(layout: TokenLayout, block_size: int) -> tuple[int, int, int]:
    """A (t, h, w) tile of ``block_size`` tokens (h, w powers of two within the frame, t what is left),
    or the nearest smaller one; FastVideo's (6, 8, 8) when nothing fits."""
    best = None
    for h in (1, 2, 4, 8, 16, 32):
        for w in (1, 2, 4, 8, 16, 32):
            if h > layout.height or w > layout.width or block_size % (h * w):
                continue
            t = block_size // (h * w)
            if t > layout.frames:
                continue
            score = (t * h * w, -abs(h - w), -t)  # fill the block, squarish in-frame, few frames
            if best is None or score > best[0]:
                best = (score, (t, h, w))
    return best[1] if best else (6, 8, 8)


def axis_keep(tiles: int, window: int) -> torch.Tensor:
    """[tiles, tiles] bool: query tile q keeps key tile k along one axis."""
    if window >= tiles:  # the window spans the axis
        return torch.ones(tiles, tiles, dtype=torch.bool)
    half = window // 2
    q = torch.arange(tiles)
    centre = torch.clamp(q, min=half, max=tiles - 1 - half)  # window < tiles: min <= max
    return (centre[:, None] - q[None, :]).abs() <= half


def tile_grid(layout: TokenLayout, tile: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(-(-size // t) for size, t in zip((layout.frames, layout.height, layout.width), tile))


def tile_block_mask(layout: TokenLayout, block_size: int, params: SlidingTileParams) -> torch.Tensor:
    """[blocks, blocks] bool in the tile-major ordering: a block pair is kept when any of its tile pairs is."""
    ordering = tile_major_name(*params.tile)
    grid = tile_grid(layout, params.tile)
    keep = axis_keep(grid[0], params.window[0])
    for n, k in zip(grid[1:], params.window[1:]):
        keep = (keep[:, None, :, None] & axis_keep(n, k)[None, :, None, :]).reshape(keep.shape[0] * n, -1)
    # tile of every video token in the tile-major order (tiles are contiguous runs of it)
    vs = layout.video_start
    old = layout.permutation(ordering)[vs:vs + layout.video_tokens] - vs
    f = old // layout.tokens_per_frame
    y = (old % layout.tokens_per_frame) // layout.width
    x = old % layout.width
    tile_of = ((f // params.tile[0]) * grid[1] + y // params.tile[1]) * grid[2] + x // params.tile[2]
    nb = num_blocks(layout.num_tokens, block_size)
    members = torch.zeros(nb, keep.shape[0])
    members[(torch.arange(layout.video_tokens) + vs) // block_size, tile_of] = 1.0
    mask = (members @ keep.float() @ members.t()) > 0
    return BlockGeometry(layout, block_size, ordering).with_text(mask, True, True)


@register_method
class SlidingTile(Method):
    name = "sliding_tile"
    summary = "Sliding Tile Attention: each query tile keeps a window of whole tiles around it (static)"
    varies = frozenset()  # one mask per layout and parameters: the same for every layer, head and step
    Params = SlidingTileParams

    @classmethod
    def search_params(cls, layout: TokenLayout, block_size: int) -> list[dict]:
        # a tile of one block's tokens where the frame allows it (blocks then never straddle tiles),
        # windows from the frame's own tiles to five frames of 3 x 3 tiles
        tile = tile_for_block(layout, block_size)
        return [{"tile": list(tile), "window": list(w)} for w in ((1, 3, 3), (3, 3, 3), (5, 3, 3), (3, 5, 5))]

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict:
        tile = (6, 8, 8)
        return {"tile": list(tile), "window": [2 * -(-n // t) + 1 for n, t in
                                               zip((layout.frames, layout.height, layout.width), tile)]}

    @staticmethod
    def build(
        layout: TokenLayout, block_size: int, params: SlidingTileParams, *, layer: int, head: int, step: int
    ) -> BlockPattern | None:
        mask = tile_block_mask(layout, block_size, params)
        return BlockPattern.from_block_mask("sliding_tile", params.to_dict(), layout, block_size, mask,
                                            tile_major_name(*params.tile))
