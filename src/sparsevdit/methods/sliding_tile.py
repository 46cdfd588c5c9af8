"""Sliding Tile Attention (FastVideo's STA): windows of whole tiles in a tile-major token order.

Tokens are reordered tile-major (``layout.tile_major_TxHxW``: tiles of ``tile`` = (t, h, w) tokens,
frame-major inside a tile, edge tiles clipped). A query tile keeps the key tiles of a ``window``
= (kt, kh, kw) tiles around it. Per axis the window's centre is ``clamp(query_tile, k // 2,
n - 1 - k // 2)`` over the n tiles of that axis, so an edge query gets a shifted full window. A key
tile is kept when ``|centre - key_tile| <= k // 2``: an even k covers k + 1 tiles, as in the released
code. Text rows and columns are dense: video queries see all text, text queries see everything.

``dilation`` = (dt, dh, dw) is NATTEN's general 3-D neighbourhood at tile granularity: along an axis
with dilation d, tiles fall into d interleaved groups (tile index mod d) and a query tile's window is
taken in its own group's subsequence (centre clamped there, as above); d = 1 is STA.

Presets (``model_family``), from FastVideo's released STA code as docs/methods.md reads it:
- ``hunyuan``: tiles (6, 8, 8) (their kernel's tile over HunyuanVideo's 30 x 48 x 80 latents),
  window (5, 3, 3) (their released strategy's most common window); they run the first 15 of 50
  steps dense: pass ``dense_steps=15``.
- ``wan``: tiles (3, 8, 8): the tile of their second kernel variant (``sta_fwd_388``), the one that
  divides the 18 x 48 x 80 latents of their Wan setting (69 x 768 x 1280 px); window (3, 3, 3) (the
  released default); their Wan mask search skips the first 12 steps: pass ``dense_steps=12``. (Their
  Wan windows are searched per layer and head; we ship the default, not the searched file.)
Without a preset: tiles (6, 8, 8), window (3, 3, 3).

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
from .base import Method, MethodError, MethodParams, check_choice, register_method


DEFAULT = {"tile": (6, 8, 8), "window": (3, 3, 3)}
PRESETS: dict[str, dict] = {
    "hunyuan": {"tile": (6, 8, 8), "window": (5, 3, 3)},
    "wan": {"tile": (3, 8, 8), "window": (3, 3, 3)},
}


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

    model_family: None, 'wan' or 'hunyuan': FastVideo's tile and window for that model (fields left None).
    tile: tokens per tile along (frames, rows, columns); FastVideo's tile is (6, 8, 8) = 384 tokens.
    window: tiles per window along (frames, rows, columns); HunyuanVideo's released runs mostly use (5, 3, 3).
    dilation: tile stride of the window along (frames, rows, columns), NATTEN's dilation; (1, 1, 1) is STA.
    """

    method: ClassVar[str] = "sliding_tile"

    model_family: str | None = None
    tile: tuple[int, int, int] | None = None
    window: tuple[int, int, int] | None = None
    dilation: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_family is not None:
            check_choice(self.method, "model_family", self.model_family, tuple(PRESETS))
        for key, value in PRESETS.get(self.model_family, DEFAULT).items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("tile", "window", "dilation"):
            object.__setattr__(self, key, _triple(self.method, key, getattr(self, key)))


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


def axis_keep(tiles: int, window: int, dilation: int = 1) -> torch.Tensor:
    """[tiles, tiles] bool: query tile q keeps key tile k along one axis (window and centre counted in
    q's dilation group: the tiles congruent to q modulo ``dilation``)."""
    q = torch.arange(tiles)
    same = (q[:, None] % dilation) == (q[None, :] % dilation)
    pos = q // dilation  # index inside the group
    size = (tiles - 1 - q % dilation) // dilation + 1  # tiles in q's group
    half = window // 2
    spans = window >= size  # the window covers the whole group
    centre = torch.maximum(torch.minimum(pos, size - 1 - half), torch.full_like(pos, half))
    near = (centre[:, None] - pos[None, :]).abs() <= half
    return same & (spans[:, None] | near)


def tile_grid(layout: TokenLayout, tile: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(-(-size // t) for size, t in zip((layout.frames, layout.height, layout.width), tile))


def tile_block_mask(layout: TokenLayout, block_size: int, params: SlidingTileParams) -> torch.Tensor:
    """[blocks, blocks] bool in the tile-major ordering: a block pair is kept when any of its tile pairs is."""
    ordering = tile_major_name(*params.tile)
    grid = tile_grid(layout, params.tile)
    keep = axis_keep(grid[0], params.window[0], params.dilation[0])
    for n, k, d in zip(grid[1:], params.window[1:], params.dilation[1:]):
        keep = (keep[:, None, :, None] & axis_keep(n, k, d)[None, :, None, :]).reshape(keep.shape[0] * n, -1)
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
    presets = {f"model_family={k}": v for k, v in PRESETS.items()}

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
