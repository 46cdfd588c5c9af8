"""Top-k / cumulative-mass block selection from pooled Q and K (SpargeAttn, XAttention, FlexPrefill style).

The rule, per head: mean-pool the queries and keys of every block (over the batch too: the kernels take
one block list per head), score each pooled pair ``q_i . k_j * scale``, softmax over the key blocks of
each query block, and keep

- with ``tau``: the fewest key blocks, best first, whose softmax mass reaches ``tau`` (the block that
  crosses it included);
- with ``fraction``: the ``ceil(fraction * key blocks)`` best;

plus, always, the key blocks holding text (``keep_text``) and those of the first ``sink_frames`` frames.
Text query blocks keep every key block. Everything is tensor operations on q's device: no host
synchronisation, no Python loop over blocks, never an N x N tensor (the scores are blocks x blocks).
The result is the kernels' index form: ``counts`` int32 [H, q_blocks] and ``indices`` int32
[H, q_blocks, k_blocks], each row ascending, padded with -1.

Registered as the dynamic method ``topk``: ``methods.dynamic`` runs it once per layer and step (and
``reuse_every``); ``patterns_from_index`` turns a selection into ordinary BlockPatterns for any backend.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import TokenLayout, tile_major_name
from ..patterns.base import BlockPattern, num_blocks
from ..patterns.selection import BlockSelection
from .base import Method, MethodError, check_int, register_method
from .dynamic import DynamicParams, patterns_from_index  # noqa: F401  (re-exported)


@dataclass(frozen=True, kw_only=True)
class TopKParams(DynamicParams):
    """Top-k block selection's parameters.

    tau: keep the fewest key blocks whose pooled softmax mass reaches tau, in (0, 1] (None: use fraction).
    fraction: keep this fraction of the key blocks per query block, in (0, 1] (only without tau).
    keep_text: key blocks holding text tokens are always kept.
    sink_frames: key blocks of the first N frames are always kept.
    region: DraftAttention-style pooling over (t, h, w) token regions of t * h * w = block_size tokens: the
        tokens are reordered tile-major so that a region is one block (None: blocks of the frame-major order).
    """

    method: ClassVar[str] = "topk"

    tau: float | None = 0.9
    fraction: float | None = None
    keep_text: bool = True
    sink_frames: int = 0
    region: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.tau is None) == (self.fraction is None):
            raise MethodError("method 'topk': give exactly one of tau (cumulative mass) and fraction")
        for key in ("tau", "fraction"):
            value = getattr(self, key)
            if value is not None:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if not ok or not 0 < value <= 1:
                    raise MethodError(f"method 'topk': {key} must be a number in (0, 1], got {value!r}")
        if not isinstance(self.keep_text, bool):
            raise MethodError(f"method 'topk': keep_text must be True or False, got {self.keep_text!r}")
        check_int(self.method, "sink_frames", self.sink_frames)
        if self.region is not None:
            from .sliding_tile import _triple

            object.__setattr__(self, "region", _triple(self.method, "region", self.region))

    def ordering(self, block_size: int) -> str:
        """The token order the blocks are counted in: frame-major, or tile-major by ``region``."""
        if self.region is None:
            return "frame_major"
        t, h, w = self.region
        if t * h * w != block_size:
            raise MethodError(f"method 'topk': region {list(self.region)} holds {t * h * w} tokens; a region is one block, "
                              f"so t * h * w must equal the block size {block_size}")
        return tile_major_name(t, h, w)


def pooled(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, H, N, D] -> [H, blocks, D]: the mean over the batch and each block's real tokens (float32).
    Summed in float32 straight from x's dtype and strides: no float32 copy of x, no padding."""
    b, h, n, d = x.shape
    full = n // block_size
    parts = []
    if full:
        parts.append(x[:, :, : full * block_size].unflatten(2, (full, block_size)).sum(dim=(0, 3), dtype=torch.float32)
                     / (b * block_size))
    rest = n - full * block_size
    if rest:
        parts.append(x[:, :, full * block_size:].sum(dim=(0, 2), dtype=torch.float32)[:, None] / (b * rest))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


@functools.lru_cache(maxsize=64)
def _forced(layout: TokenLayout, block_size: int, keep_text: bool, sink_frames: int, device: torch.device,
            ordering: str = "frame_major"):
    """(bool [k_blocks] kept by every query block, bool [q_blocks] of text query blocks) on ``device``,
    blocks counted in ``ordering``, made once per layout (no host-to-device copy per selection)."""
    n = layout.num_tokens
    nb = num_blocks(n, block_size)
    text = torch.zeros(n, dtype=torch.bool)
    if layout.num_text:
        lo, hi = layout.text_range
        text[lo:hi] = True
    cols = text.clone() if keep_text else torch.zeros_like(text)
    if sink_frames:
        vs = layout.video_start
        cols[vs:vs + min(sink_frames, layout.frames) * layout.tokens_per_frame] = True
    perm = layout.permutation(ordering)  # position j of the ordering holds token perm[j]
    pad = nb * block_size - n

    def per_block(tok):
        return torch.nn.functional.pad(tok[perm], (0, pad)).view(nb, block_size).any(1).to(device)

    return per_block(cols), per_block(text)


@functools.lru_cache(maxsize=16)
def _permutation(layout: TokenLayout, ordering: str, device: torch.device) -> torch.Tensor:
    return layout.permutation(ordering).to(device)


def forced_key_blocks(layout: TokenLayout, block_size: int, p: TopKParams, device) -> torch.Tensor:
    """bool [k_blocks]: key blocks every query block keeps (text, sink frames)."""
    return _forced(layout, block_size, p.keep_text, p.sink_frames, torch.device(device))[0]


def text_query_blocks(layout: TokenLayout, block_size: int, device) -> torch.Tensor:
    """bool [q_blocks]: query blocks holding a text token (they keep every key block)."""
    return _forced(layout, block_size, True, 0, torch.device(device))[1]


def ascending_lists(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [H, q_blocks, k_blocks] -> (counts int32 [H, q_blocks], indices int32 [H, q_blocks, k_blocks]): each
    row's kept key blocks ascending, -1 padded, by a prefix sum and one scatter (no sort)."""
    h, nq, nk = kept.shape
    slot = torch.cumsum(kept, -1, dtype=torch.int32) - 1  # where a kept block goes in its row's list
    slot = torch.where(kept, slot, nk)  # the others to a spill column
    ids = torch.arange(nk, device=kept.device, dtype=torch.int32).expand(h, nq, nk)
    out = torch.full((h, nq, nk + 1), -1, dtype=torch.int32, device=kept.device)
    out.scatter_(-1, slot.long(), ids)
    return kept.sum(-1, dtype=torch.int32), out[..., :nk]


def select(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, block_size: int, params: TopKParams,
           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The key blocks each query block of each head keeps: (counts [H, nq], indices [H, nq, nk])."""
    if q.shape[2] != layout.num_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but the layout {layout} has {layout.num_tokens}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    ordering = params.ordering(block_size)
    if ordering != "frame_major":  # a region is one block of the tile-major order
        perm = _permutation(layout, ordering, q.device)
        q, k = q.index_select(2, perm), k.index_select(2, perm)
    qp, kp = pooled(q, block_size), pooled(k, block_size)
    probs = torch.softmax(torch.einsum("hid,hjd->hij", qp, kp) * scale, dim=-1)  # [H, nq, nk]
    nk = probs.shape[-1]
    if params.tau is not None:
        ranked, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        keep_ranked = torch.cumsum(ranked, -1) - ranked < params.tau  # ... so the block that crosses tau is kept too
        kept = torch.zeros_like(keep_ranked).scatter_(-1, order, keep_ranked)
    else:
        best = torch.topk(probs, math.ceil(params.fraction * nk), dim=-1, sorted=False).indices
        kept = torch.zeros(probs.shape, dtype=torch.bool, device=q.device).scatter_(-1, best, True)
    forced, text_rows = _forced(layout, block_size, params.keep_text, params.sink_frames, q.device, ordering)
    kept |= forced[None, None, :]
    kept |= text_rows[None, :, None]
    return ascending_lists(kept)


@register_method
class TopK(Method):
    name = "topk"
    summary = "pooled Q.K block scores: per query block the fewest key blocks reaching a softmax mass tau (dynamic)"
    Params = TopKParams

    @staticmethod
    def select(q, k, layout: TokenLayout, block_size: int, params: TopKParams, *, v=None, layer: int = 0, step: int = 0):
        ordering = params.ordering(block_size)
        if ordering == "frame_major":
            return select(q, k, layout, block_size, params)  # the kernels' index form
        return BlockSelection(layout, block_size, *select(q, k, layout, block_size, params), name="topk",
                              params=params.to_dict(), ordering=ordering)

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict:
        return {"tau": None, "fraction": 1.0}
