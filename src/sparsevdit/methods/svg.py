"""Sparse VideoGen's online choice: per head and step, its spatial or its temporal mask, by the error on
sampled query rows.

Masks, as its released code builds them (docs/methods.md): with ``sparsity`` s the *kept* fraction and
T frames of F tokens, ``m = T * (1 - sqrt(1 - s))`` frames; a band of ``R`` tokens around each query,
``R = ceil128(m * F)`` and ``|q - k| <= R`` for Wan (``model_family="wan"``, plus the first frame's
tokens as sink keys), ``R = floor128(m * F)`` and ``|q - k| < R`` for HunyuanVideo / CogVideoX (no
sink); text rows and columns dense. The spatial mask is the band in frame-major order, the temporal
mask the same band in position-major order (the same place in every frame). A block pair is kept when
any of its token pairs is.

Choice: at each selection step ``probe_rows`` query rows are drawn (one per equal stratum of the
sequence, seeded by ``seed``, the layer and the step); each head's output on them under each mask is
compared with its dense output (mean squared error) and the head takes the mask with the lower error.
The probe costs ``probe_rows / N`` of a dense head's products and one read of k and of v. The choice is
read on the host (one small copy per layer and selection step).
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


def probe_rows(n: int, p: SVGParams, layer: int, step: int) -> torch.Tensor:
    """The sampled query rows (int64, ascending, on the CPU): one uniformly drawn row in each of
    ``min(probe_rows, n)`` equal strata of the sequence, seeded by (seed, layer, step). Stratified rather
    than a permutation: it spreads the probe over every frame and costs 64 draws, not a shuffle of N."""
    r = min(p.probe_rows, n)
    g = torch.Generator().manual_seed(p.seed * 1_000_003 + layer * 1009 + step)
    edges = torch.arange(r + 1, dtype=torch.float64) * (n / r)
    lo = edges[:-1].floor()
    width = edges[1:].floor() - lo  # >= 1 as r <= n
    return (lo + (torch.rand(r, generator=g, dtype=torch.float64) * width).floor()).long()


def choose(q, k, v, layout: TokenLayout, block_size: int, p: SVGParams, *, layer: int = 0, step: int = 0,
           scale: float | None = None) -> list[int]:
    """Per head 0 (spatial) or 1 (temporal): the mask whose output on the probe rows is nearer dense.

    One pass of products for the three outputs: the probe's scores are exponentiated once against the
    row's dense maximum, the two masked copies are that tensor times each mask, and one matmul against v
    gives the dense and both masked numerators (v is read once). Products and the exponentials are
    stored in k's dtype (as the dense softmax the model runs); sums, outputs and errors are float32.
    A mask that keeps under e^-80 of a row's dense mass (its exponentials underflow) scores that row's
    output as zero, i.e. as far from dense as the row itself.
    """
    b, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows = probe_rows(n, p, layer, step).to(q.device)
    r = rows.numel()
    s = torch.matmul(q[:, :, rows].to(k.dtype) * scale, k.transpose(-1, -2))  # [B, H, r, N]
    exps = torch.empty((b, h, 3, r, n), dtype=s.dtype, device=s.device)
    torch.sub(s, s.amax(-1, keepdim=True), out=exps[:, :, 0])
    del s
    exps[:, :, 0].exp_()
    for i, pattern in enumerate(masks(layout, block_size, p), start=1):
        torch.mul(exps[:, :, 0], _kept_keys(pattern, rows, q.device), out=exps[:, :, i])
    sums = exps.sum(-1, dtype=torch.float32)  # [B, H, 3, r]
    numer = torch.matmul(exps.view(b, h, 3 * r, n), v.to(exps.dtype)).view(b, h, 3, r, d).float()
    out = (numer / sums[..., None]).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    errs = ((out[:, :, 1:] - out[:, :, :1]) ** 2).mean((0, 3, 4))  # [H, 2]
    return (errs[:, 1] < errs[:, 0]).long().tolist()


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
