"""Sparse VideoGen's online choice: per head and step, its spatial or its temporal mask, by the error on
sampled query rows.

Masks, as its released code builds them (docs/methods.md): with ``sparsity`` s the *kept* fraction and
T frames of F tokens, ``m = T * (1 - sqrt(1 - s))`` frames; a band of ``R`` tokens around each query,
``R = ceil128(m * F)`` and ``|q - k| <= R`` for Wan (``model_family="wan"``, plus the first frame's
tokens as sink keys), ``R = floor128(m * F)`` and ``|q - k| < R`` for HunyuanVideo / CogVideoX (no
sink); text rows and columns dense. The spatial mask is the band in frame-major order, the temporal
mask the same band in position-major order (the same place in every frame). A block pair is kept when
any of its token pairs is.

Choice: at each selection step ``probe_rows`` query rows are drawn (seeded by ``seed``, the layer and
the step); each head's output on them under each mask is compared with its dense output (mean squared
error) and the head takes the mask with the lower error. The probe costs ``probe_rows / N`` of a dense
head. The choice is read on the host (one small copy per layer and selection step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from .. import patterns as P
from ..layout import TokenLayout
from .base import Method, MethodError, check_choice, check_int, register_method
from .dynamic import DynamicParams


@dataclass(frozen=True, kw_only=True)
class SVGParams(DynamicParams):
    """Sparse VideoGen's parameters.

    sparsity: the kept fraction s of each mask's band, in (0, 1] (their 'sparsity'; 0.25 in their Wan scripts).
    model_family: 'wan' (band <= ceil128, first frame a sink) or 'hunyuan' (band < floor128, no sink; also CogVideoX).
    probe_rows: query rows sampled to compare the two masks (their num_sampled_rows: 64).
    seed: seed of the sampled rows.
    """

    method: ClassVar[str] = "svg"

    sparsity: float = 0.25
    model_family: str = "wan"
    probe_rows: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool) and math.isfinite(self.sparsity)
        if not ok or not 0 < self.sparsity <= 1:
            raise MethodError(f"method 'svg': sparsity must be a kept fraction in (0, 1], got {self.sparsity!r}")
        check_choice(self.method, "model_family", self.model_family, ("wan", "hunyuan"))
        check_int(self.method, "probe_rows", self.probe_rows, 1)
        check_int(self.method, "seed", self.seed)


def band_radius(layout: TokenLayout, p: SVGParams) -> int:
    """The largest |q - k| the band keeps, in tokens."""
    m_tokens = layout.frames * (1 - math.sqrt(1 - p.sparsity)) * layout.tokens_per_frame
    if p.model_family == "wan":
        return int(math.ceil(m_tokens / 128) * 128)  # |q - k| <= R
    return max(0, int(math.floor(m_tokens / 128) * 128) - 1)  # |q - k| < R


@lru_cache(maxsize=32)
def masks(layout: TokenLayout, block_size: int, p: SVGParams) -> tuple[P.BlockPattern, P.BlockPattern]:
    """(spatial, temporal) BlockPatterns of ``layout``."""
    # the patterns keep |q - k| <= width // 2; below 128 tokens of band (tiny videos) floor128 leaves
    # nothing, and we keep the query's own token rather than an empty band
    width = max(1, 2 * band_radius(layout, p))
    sink = p.model_family == "wan"
    spatial = [{"name": "diagonal", "params": {"width": width}}]
    temporal = [{"name": "multi_diagonal", "params": {"width": width}}]
    if sink:
        # their sink is ``kv_idx < tokens_per_frame`` in the order each head attends in: the first frame
        # for a spatial head, but the first F tokens of the position-major order (the first F / T
        # positions of every frame) for a temporal one; frame 0's own tokens would lie in every
        # position-major block and make the temporal mask dense
        spatial.append({"name": "vertical_stripe", "params": {"sink_frames": 1}})
        first, last = layout.video_start, layout.video_start + layout.tokens_per_frame - 1
        temporal.append({"name": "vertical_stripe", "params": {
            "blocks": list(range(first // block_size, last // block_size + 1)), "ordering": "position_major"}})
    return (P.build("union", layout, block_size=block_size, patterns=spatial),
            P.build("union", layout, block_size=block_size, patterns=temporal))


@lru_cache(maxsize=64)
def _block_of_token(pattern: P.BlockPattern, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [N]: the block of each frame-major token in the pattern's order, bool block mask), on
    ``device`` once per pattern (no host-to-device copy per selection)."""
    inv = pattern.layout.inverse_permutation(pattern.ordering)  # token -> position in the pattern's order
    return (inv // pattern.block_size).to(device), pattern.block_mask.to(device)


def _kept_keys(pattern: P.BlockPattern, rows: torch.Tensor, device) -> torch.Tensor:
    """bool [rows, N]: the frame-major key tokens each of the (frame-major) query ``rows`` keeps."""
    block, mask = _block_of_token(pattern, torch.device(device))
    return mask[block[rows]][:, block]


def choose(q, k, v, layout: TokenLayout, block_size: int, p: SVGParams, *, layer: int = 0, step: int = 0,
           scale: float | None = None) -> list[int]:
    """Per head 0 (spatial) or 1 (temporal): the mask whose output on the probe rows is nearer dense.
    The probe's products run in k's dtype (no float32 copy of k and v; float32 on a CPU), the softmax
    and the errors in float32."""
    b, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = torch.Generator().manual_seed(p.seed * 1_000_003 + layer * 1009 + step)
    rows = torch.sort(torch.randperm(n, generator=g)[: min(p.probe_rows, n)]).values.to(q.device)
    s = torch.matmul(q[:, :, rows].to(k.dtype), k.transpose(-1, -2)).float() * scale  # [B, H, r, N]
    dense = torch.matmul(torch.softmax(s, -1).to(v.dtype), v).float()
    errs = []
    for pattern in masks(layout, block_size, p):
        keep = _kept_keys(pattern, rows, q.device)
        probs = torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
        out = torch.matmul(probs.to(v.dtype), v).float()
        errs.append(((out - dense) ** 2).mean((0, 2, 3)))  # [H]
    return (errs[1] < errs[0]).long().tolist()


@register_method
class SVG(Method):
    name = "svg"
    summary = "Sparse VideoGen: per head and step its spatial or temporal band, by the error on sampled rows (dynamic)"
    Params = SVGParams

    @staticmethod
    def select(q, k, layout: TokenLayout, block_size: int, params: SVGParams, *, v=None, layer: int = 0, step: int = 0):
        if v is None:
            raise MethodError("method 'svg' compares outputs on sampled rows: it needs the layer's v too")
        pair = masks(layout, block_size, params)
        return [pair[c] for c in choose(q, k, v, layout, block_size, params, layer=layer, step=step)]

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict:
        return {"sparsity": 1.0}
