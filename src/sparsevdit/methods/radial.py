"""Radial attention's static energy-decay mask, as its authors' released mask generator builds it.

Token rule, per (query frame i, key frame j) with d = |i - j|, F tokens per frame, P = 2**bitlen(F):
- ``sink == "first_frame"`` (Wan): key frame 0 is dense for every query frame;
- otherwise a query token keeps a key token when their 1-D in-frame raster indices differ by at most
  ``near_window[d] * F`` for d < len(near_window), else ``max(P / 2**bitlen(d) * decay_factor, block_size)``;
- a non-sink frame pair is dropped whole when ``P / 2**bitlen(d) < thin_threshold`` and d is not a
  multiple of ``thin_threshold / (P / 2**bitlen(d))`` (their code hard-codes 128, not the block size).
Token mask to block mask, per frame pair placed at its token offsets: a block is kept when more than
60% of its non-empty key columns have more than a third of the block's rows set; frame pairs are
OR-ed. Text rows and columns are dense.

One deviation: the authors divide a column's set rows by ``block_size`` and truncate the sequence
to whole blocks; we keep the partial last block and divide by its real rows, so its queries are not
starved. Interior blocks are exactly theirs.

Defaults (``model_family`` presets), from docs/methods.md's reading of the released code: Wan:
decay 0.2, key frame 0 a sink, d <= 1 whole frame (the newest code; earlier code used half a frame at
d = 1: ``near_window=(1.0, 0.5)``); HunyuanVideo: no sink, d <= 1 whole frame. The authors also keep
the first layer(s) and ~12 of 50 steps dense: pass ``dense_layers`` / ``dense_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from ..layout import TokenLayout
from ..patterns.base import BlockGeometry, BlockPattern, check_block_grid, num_blocks
from .base import Method, MethodError, MethodParams, check_choice, check_int, check_number, register_method, tuple_field

FAMILIES = ("wan", "hunyuan")
SINKS = ("first_frame", "none")
PRESETS: dict[str, dict] = {
    "wan": {"decay_factor": 0.2, "sink": "first_frame", "near_window": (1.0, 1.0)},
    "hunyuan": {"decay_factor": 0.2, "sink": "none", "near_window": (1.0, 1.0)},
}


@dataclass(frozen=True, kw_only=True)
class RadialParams(MethodParams):
    """Radial attention's parameters; None takes the ``model_family`` preset.

    model_family: 'wan' or 'hunyuan': the authors' defaults for the fields left None.
    decay_factor: scales the window P / 2**bitlen(d) of far frame pairs.
    sink: 'first_frame' (key frame 0 dense for every query frame) or 'none'.
    near_window: window, as a fraction of a frame, for frame distance d = 0, 1, ...
    thin_threshold: frame pairs whose base window is below this are thinned (the authors' 128).
    """

    method: ClassVar[str] = "radial"

    model_family: str = "wan"
    decay_factor: float | None = None
    sink: str | None = None
    near_window: tuple[float, ...] | None = None
    thin_threshold: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.method, "model_family", self.model_family, FAMILIES)
        for key, value in PRESETS[self.model_family].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_number(self.method, "decay_factor", self.decay_factor)
        check_choice(self.method, "sink", self.sink, SINKS)
        near = tuple_field(self, "near_window", "a tuple of fractions in (0, 1]")
        for frac in near:
            check_number(self.method, "near_window entry", frac)
            if frac > 1:
                raise MethodError(f"method 'radial': near_window entries must be in (0, 1], got {frac!r}")
        check_int(self.method, "thin_threshold", self.thin_threshold, 1)


def pair_window(i: int, j: int, tokens_per_frame: int, block_size: int, p: RadialParams) -> int | None:
    """In-frame raster distance kept for query frame i and key frame j, or None when the pair is dropped."""
    f = tokens_per_frame
    if p.sink == "first_frame" and j == 0:
        return f
    d = abs(i - j)
    base = 2 ** f.bit_length() / 2 ** d.bit_length()
    if base < p.thin_threshold and d % int(p.thin_threshold / base) != 0:
        return None
    if d < len(p.near_window):
        return int(p.near_window[d] * f)
    return max(math.floor(base * p.decay_factor), block_size)


@lru_cache(maxsize=1024)
def _pair_blocks(row_off: int, col_off: int, f: int, window: int, block_size: int, last_rows: int) -> torch.Tensor:
    """Block mask of one frame pair whose frames start ``row_off`` / ``col_off`` tokens into a block;
    ``last_rows`` is the real rows of its last row block. Computed from per-column counts, O(F * F / b)."""
    b = block_size
    h, w = (row_off + f - 1) // b + 1, (col_off + f - 1) // b + 1
    rb = torch.arange(h)
    r0 = torch.clamp(rb * b - row_off, min=0)[:, None]
    r1 = torch.clamp((rb + 1) * b - row_off, max=f)[:, None]  # exclusive
    c = torch.arange(f)[None, :]
    # Rows r of the block with |r - c| <= window, for each key column c.
    count = torch.clamp(torch.minimum(r1 - 1, c + window) - torch.maximum(r0, c - window) + 1, min=0)
    rows = torch.full((h, 1), b)
    rows[-1] = last_rows
    col_block = (col_off + torch.arange(f)) // b
    nonzero = torch.zeros(h, w, dtype=torch.int64).index_add_(1, col_block, (count > 0).long())
    high = torch.zeros(h, w, dtype=torch.int64).index_add_(1, col_block, (3 * count > rows).long())
    return 5 * high > 3 * nonzero  # more than 60% of non-empty columns have more than a third of the rows


def radial_block_mask(layout: TokenLayout, block_size: int, p: RadialParams) -> torch.Tensor:
    """bool [blocks, blocks] in frame-major order."""
    check_block_grid(layout, block_size)
    n, b, f = layout.num_tokens, block_size, layout.tokens_per_frame
    nb = num_blocks(n, b)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(layout.frames):
        si = layout.video_start + i * f
        rb0, rb1 = si // b, (si + f - 1) // b
        last_rows = min(b, n - rb1 * b)
        for j in range(layout.frames):
            window = pair_window(i, j, f, b, p)
            if window is None:
                continue
            sj = layout.video_start + j * f
            local = _pair_blocks(si % b, sj % b, f, window, b, last_rows)
            cb0 = sj // b
            mask[rb0 : rb0 + local.shape[0], cb0 : cb0 + local.shape[1]] |= local
    return BlockGeometry(layout, b, "frame_major").with_text(mask, True, True)


@register_method
class Radial(Method):
    name = "radial"
    summary = "Radial attention: a window that halves as frame distance doubles (static, O(n log n))"
    varies = frozenset()  # one mask per layout and parameters: the same for every layer, head and step
    Params = RadialParams
    presets = {f"model_family={k}": v for k, v in PRESETS.items()}

    @classmethod
    def search_params(cls, layout: TokenLayout, block_size: int) -> list[dict]:
        # the authors' mask for Wan (key frame 0 a sink) and for HunyuanVideo (no sink)
        return [{"model_family": "wan"}, {"model_family": "hunyuan"}]

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict:
        # every frame distance within the near windows, whole frames, no thinning
        return {"near_window": [1.0] * layout.frames, "thin_threshold": 1}

    @staticmethod
    def build(
        layout: TokenLayout, block_size: int, params: RadialParams, *, layer: int, head: int, step: int
    ) -> BlockPattern | None:
        mask = radial_block_mask(layout, block_size, params)
        return BlockPattern.from_block_mask("radial", params.to_dict(), layout, block_size, mask, "frame_major")
