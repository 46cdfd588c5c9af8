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

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import TokenLayout
from ..patterns.base import BlockPattern, num_blocks
from .base import Method, MethodError, check_int, register_method
from .dynamic import DynamicParams, patterns_from_index  # noqa: F401  (re-exported)


@dataclass(frozen=True, kw_only=True)
class TopKParams(DynamicParams):
    """Top-k block selection's parameters.

    tau: keep the fewest key blocks whose pooled softmax mass reaches tau, in (0, 1] (None: use fraction).
    fraction: keep this fraction of the key blocks per query block, in (0, 1] (only without tau).
    keep_text: key blocks holding text tokens are always kept.
    sink_frames: key blocks of the first N frames are always kept.
    """

    method: ClassVar[str] = "topk"

    tau: float | None = 0.9
    fraction: float | None = None
    keep_text: bool = True
    sink_frames: int = 0

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


def pooled(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, H, N, D] -> [H, blocks, D]: the mean over the batch and each block's real tokens (float32)."""
    b, h, n, d = x.shape
    nb = num_blocks(n, block_size)
    pad = nb * block_size - n
    summed = torch.nn.functional.pad(x.float(), (0, 0, 0, pad)).view(b, h, nb, block_size, d).sum((0, 3))
    sizes = torch.full((nb,), float(block_size), device=x.device)
    sizes[-1] = block_size - pad
    return summed / (b * sizes)[None, :, None]


def forced_key_blocks(layout: TokenLayout, block_size: int, p: TopKParams, device) -> torch.Tensor:
    """bool [k_blocks]: key blocks every query block keeps (text, sink frames)."""
    nb = num_blocks(layout.num_tokens, block_size)
    tok = torch.zeros(nb * block_size, dtype=torch.bool)
    if p.keep_text and layout.num_text:
        lo, hi = layout.text_range
        tok[lo:hi] = True
    if p.sink_frames:
        vs = layout.video_start
        tok[vs:vs + min(p.sink_frames, layout.frames) * layout.tokens_per_frame] = True
    return tok.view(nb, block_size).any(1).to(device)


def text_query_blocks(layout: TokenLayout, block_size: int, device) -> torch.Tensor:
    """bool [q_blocks]: query blocks holding a text token (they keep every key block)."""
    nb = num_blocks(layout.num_tokens, block_size)
    tok = torch.zeros(nb * block_size, dtype=torch.bool)
    if layout.num_text:
        lo, hi = layout.text_range
        tok[lo:hi] = True
    return tok.view(nb, block_size).any(1).to(device)


def select(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, block_size: int, params: TopKParams,
           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The key blocks each query block of each head keeps: (counts [H, nq], indices [H, nq, nk])."""
    if q.shape[2] != layout.num_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but the layout {layout} has {layout.num_tokens}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qp, kp = pooled(q, block_size), pooled(k, block_size)
    probs = torch.softmax(torch.einsum("hid,hjd->hij", qp, kp) * scale, dim=-1)  # [H, nq, nk]
    nk = probs.shape[-1]
    order = torch.argsort(probs, dim=-1, descending=True, stable=True)
    ranked = torch.gather(probs, -1, order)
    if params.tau is not None:
        before = torch.cumsum(ranked, -1) - ranked  # mass of the better blocks
        keep_ranked = before < params.tau  # ... so the block that crosses tau is kept too
    else:
        keep_ranked = torch.arange(nk, device=q.device) < math.ceil(params.fraction * nk)
        keep_ranked = keep_ranked.expand_as(ranked)
    kept = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    kept |= forced_key_blocks(layout, block_size, params, q.device)[None, None, :]
    kept |= text_query_blocks(layout, block_size, q.device)[None, :, None]
    ids = torch.arange(nk, device=q.device, dtype=torch.int32)
    ascending = torch.sort(torch.where(kept, ids, nk), dim=-1).values  # kept ids first, ascending
    counts = kept.sum(-1).to(torch.int32)
    indices = torch.where(ascending < nk, ascending, -1).to(torch.int32)
    return counts, indices


@register_method
class TopK(Method):
    name = "topk"
    summary = "pooled Q.K block scores: per query block the fewest key blocks reaching a softmax mass tau (dynamic)"
    Params = TopKParams

    @staticmethod
    def select(q, k, layout: TokenLayout, block_size: int, params: TopKParams, *, v=None, layer: int = 0, step: int = 0):
        return select(q, k, layout, block_size, params)

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict:
        return {"tau": None, "fraction": 1.0}
