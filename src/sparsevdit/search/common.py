"""Pieces every search shares: the calibration run's settings, sampling with or without a plan,
per-layer capture hooks, and the memory-bounded measurement of attention on sampled query rows.

``measure_layer`` is the engine. For one layer's post-RoPE ``q, k, v`` ``[B, H, N, D]`` and a set of
candidate block masks it computes, on sampled query rows only (never an ``N x N`` map: rows are
processed in chunks of at most ``chunk_elements`` logits):

- the dense output of those rows and every candidate's output on the same Q/K/V, exactly: per key block
  it keeps the block's max logit ``m``, sum of ``exp(logit - m)`` and ``exp(logit - m) @ v`` (flash
  attention's partial results), from which any block-structured mask's softmax output follows by a
  max-rescaled sum over the kept blocks;
- per head, each candidate's squared error against dense (summed), the dense output's squared norm,
  and its recall (attention mass of the dense map it keeps);
- the attention mass of each key block (summed over sampled rows), in frame-major and position-major
  block order, and optionally the block-pooled map (query block x key block, frame-major).

Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch

from ..layout import TokenLayout
from ..patterns import BlockPattern, num_blocks

ORDERINGS = ("frame_major", "position_major")


@dataclass
class CalibrationConfig:
    """What a search samples: seeds (one class per seed), clip size, sampler, block size, backend."""

    seeds: tuple = (100, 101)
    classes: tuple = (0, 5)
    frames: int = 16
    height: int = 32
    width: int = 32
    steps: int = 12
    guidance: float = 3.0
    shift: float = 2.0
    block_size: int = 32
    backend: str = "auto"

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.classes = tuple(int(c) for c in self.classes)
        if len(self.classes) != len(self.seeds):
            raise ValueError(f"give one class per seed: {len(self.seeds)} seeds, {len(self.classes)} classes")

    def layout(self, model) -> TokenLayout:
        return model.cfg.layout(self.frames, self.height, self.width)

    def sampler(self):
        from ..models.vdit import SamplerConfig

        return SamplerConfig(steps=self.steps, guidance=self.guidance, shift=self.shift)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def sample_video(model, calib: CalibrationConfig, *, plan=None, backend: str | None = None, seeds=None, classes=None,
                 on_step=None, progress=None) -> torch.Tensor:
    """The sampler's videos ``[n, 3, T, H, W]`` (float32, CPU) for ``calib``, with ``plan`` applied if given."""
    from ..integrations import apply, remove
    from ..models.vdit import sample

    seeds = list(seeds if seeds is not None else calib.seeds)
    classes = list(classes if classes is not None else calib.classes)
    device = next(model.parameters()).device
    if plan is not None:
        apply(model, plan, backend=backend or calib.backend)
    try:
        video = sample(model, torch.tensor(classes, device=device), frames=calib.frames, height=calib.height,
                       width=calib.width, seeds=seeds, sampler=calib.sampler(), on_step=on_step, progress=progress)
    finally:
        if plan is not None:
            remove(model)
    return video.float().cpu()


@contextlib.contextmanager
def capturing(model, make_hook):
    """Set ``attn.capture = make_hook(layer, attn)`` on every self-attention layer; restore on exit."""
    mods = model.attention_modules()
    old = [(m.capture, m.patterns, m.backend) for m in mods]
    try:
        for i, m in enumerate(mods):
            m.capture = make_hook(i, m)
        yield
    finally:
        for m, (cap, pats, backend) in zip(mods, old):
            m.capture, m.patterns, m.backend = cap, pats, backend


def sample_rows(layout: TokenLayout, block_size: int, rows_per_block: int | None, seed: int = 0) -> torch.Tensor:
    """Query rows (frame-major token indices) to measure on: ``rows_per_block`` random rows of every
    frame-major query block, or every row when ``rows_per_block`` is None / at least the block size."""
    n = layout.num_tokens
    if rows_per_block is None or rows_per_block >= block_size:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in range(0, n, block_size):
        length = min(block_size, n - start)
        take = min(rows_per_block, length)
        rows.append(start + torch.randperm(length, generator=g)[:take])
    return torch.sort(torch.cat(rows)).values


@dataclass
class MaskSpec:
    """One candidate for ``measure_layer``: ``kind`` dense | skip | mask; ``mask`` bool
    ``[H or 1, q_blocks, kv_blocks]`` in ``ordering``."""

    kind: str
    ordering: str = "frame_major"
    mask: torch.Tensor | None = None

    @classmethod
    def of(cls, patterns: list[BlockPattern] | BlockPattern) -> "MaskSpec":
        """From one pattern for every head, or one per head (all in one ordering)."""
        pats = [patterns] if isinstance(patterns, BlockPattern) else list(patterns)
        if all(p.is_dense for p in pats):
            return cls("dense")
        if all(p.is_empty for p in pats):
            return cls("skip")
        orderings = {p.ordering for p in pats if not (p.is_dense or p.is_empty)}
        if len(orderings) > 1:
            raise ValueError("MaskSpec.of needs patterns of one token ordering")
        return cls("mask", orderings.pop(), torch.stack([p.block_mask for p in pats]))


@dataclass
class LayerStats:
    sq_err: torch.Tensor  # [H, C] summed squared error against dense
    norm2: torch.Tensor  # [H] summed squared dense output
    count: int  # elements summed per head (batch x rows x head_dim)
    recall: torch.Tensor  # [H, C] summed kept mass
    rows: int  # batch x rows
    column_mass: dict = field(default_factory=dict)  # ordering -> [H, blocks] summed
    block_map: torch.Tensor | None = None  # [H, q_blocks, kv_blocks] summed mass (frame-major)
    block_rows: torch.Tensor | None = None  # [q_blocks] rows summed into block_map per head

    @property
    def rel_err(self) -> torch.Tensor:
        return (self.sq_err / self.norm2.clamp_min(1e-30)[:, None]).sqrt()

    @property
    def mse(self) -> torch.Tensor:
        return self.sq_err / max(self.count, 1)

    @property
    def mean_recall(self) -> torch.Tensor:
        return self.recall / max(self.rows, 1)


def measure_layer_memory(layout: TokenLayout, block_size: int, heads: int, head_dim: int, candidates: list[MaskSpec], *,
                         batch: int = 1, device: str = "cuda", chunk_elements: int | None = None,
                         values: bool = True) -> int:
    """Peak temporary bytes of one ``measure_layer`` call (an upper estimate): float32 K and V in each
    token order it needs, the candidates' block masks, and one chunk of logits with its per-block
    partial sums. Nothing scales with the number of layers or steps."""
    if chunk_elements is None:
        chunk_elements = 2**26 if device.startswith("cuda") else 2**23
    nb = num_blocks(layout.num_tokens, block_size)
    padded = nb * block_size
    orders = len(set(ORDERINGS) | {c.ordering for c in candidates if c.kind == "mask"})
    kv = orders * (2 if values else 1) * batch * heads * padded * head_dim * 4
    masks = sum(1 for c in candidates if c.kind == "mask") * heads * nb * nb
    chunk = 4 * chunk_elements * 4  # logits, their exp, the block sums and outputs of one chunk (float32)
    return kv + masks + chunk


def measure_layer(q, k, v, layout: TokenLayout, block_size: int, rows: torch.Tensor, candidates: list[MaskSpec], *,
                  values: bool = True, block_map: bool = False, chunk_elements: int | None = None,
                  scale: float | None = None) -> LayerStats:
    """Errors, recall and attention mass of ``candidates`` on the sampled query ``rows`` (see module doc).

    ``chunk_elements``: logits per chunk of query rows (default 2^23 on CPU, 2^26 on a GPU); peak memory
    is a few times that in float32, plus float32 copies of K and V in each token order.
    """
    b, h, n, d = q.shape
    dev = q.device
    if chunk_elements is None:
        chunk_elements = 2**26 if dev.type == "cuda" else 2**23
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    nb = num_blocks(n, block_size)
    padded = nb * block_size
    c_count = len(candidates)
    need = sorted(set(ORDERINGS) | {c.ordering for c in candidates if c.kind == "mask"})
    invs = {o: layout.inverse_permutation(o).to(dev) for o in need}
    k_blocks, v_blocks = {}, {}
    for o in need:  # keys and values in the ordering's token order, padded to whole blocks
        perm = layout.permutation(o).to(dev)
        ko, vo = k.float().index_select(2, perm), v.float().index_select(2, perm)
        if padded > n:
            ko = torch.cat([ko, ko.new_zeros(b, h, padded - n, d)], 2)
            vo = torch.cat([vo, vo.new_zeros(b, h, padded - n, d)], 2)
        k_blocks[o] = ko
        v_blocks[o] = vo.view(b, h, nb, block_size, d) if values else None
    pad_mask = None
    if padded > n:
        pad_mask = torch.zeros(padded, dtype=torch.bool, device=dev)
        pad_mask[n:] = True
    # candidates grouped by ordering: one batched computation per group
    groups: dict[str, list[int]] = {}
    for ci, c in enumerate(candidates):
        if c.kind == "mask":
            groups.setdefault(c.ordering, []).append(ci)
    group_masks = {o: [candidates[ci].mask.to(dev).expand(h, nb, nb) for ci in cis] for o, cis in groups.items()}
    group_masks = {o: torch.stack(ms) for o, ms in group_masks.items()}  # [C_o, H, nb, nb]

    sq = torch.zeros(h, c_count, dtype=torch.float64, device=dev)
    rec = torch.zeros(h, c_count, dtype=torch.float64, device=dev)
    norm2 = torch.zeros(h, dtype=torch.float64, device=dev)
    colmass = {o: torch.zeros(h, nb, dtype=torch.float64, device=dev) for o in ORDERINGS}
    bmap = torch.zeros(h, nb, nb, dtype=torch.float64, device=dev) if block_map else None
    brows = torch.zeros(nb, dtype=torch.float64, device=dev) if block_map else None

    largest_group = max([len(v) for v in groups.values()] + [1])
    per_row = b * h * max(padded, (nb * d if values else 0), largest_group * (nb + d))
    chunk = max(1, chunk_elements // max(per_row, 1))
    rows = rows.to(dev)
    for start in range(0, rows.numel(), chunk):
        r_idx = rows[start:start + chunk]
        r = r_idx.numel()
        qr = q.float().index_select(2, r_idx) * scale
        stats = {}
        for o in need:
            lo = qr @ k_blocks[o].transpose(-1, -2)  # [B, H, r, padded]
            if pad_mask is not None:
                lo.masked_fill_(pad_mask, float("-inf"))
            lo = lo.view(b, h, r, nb, block_size)
            m = lo.amax(-1)  # every block holds a real token: finite
            lo.sub_(m[..., None]).exp_()
            s = lo.sum(-1)
            vb = torch.einsum("bhrnk,bhnkd->bhrnd", lo, v_blocks[o]) if values else None
            stats[o] = (m, s, vb)
            del lo
        m_f, s_f, vb_f = stats["frame_major"]
        big_m = m_f.amax(-1, keepdim=True)
        big_s = (torch.exp(m_f - big_m) * s_f).sum(-1)  # [B, H, r]
        mass = {o: torch.exp(stats[o][0] - big_m) * stats[o][1] / big_s[..., None] for o in need}  # [B, H, r, nb]
        for o in ORDERINGS:
            colmass[o] += mass[o].sum((0, 2)).double()
        if block_map:
            qb = torch.div(r_idx, block_size, rounding_mode="floor")
            bmap.index_add_(1, qb, mass["frame_major"].sum(0).double())
            brows.index_add_(0, qb, torch.full((r,), float(b), dtype=torch.float64, device=dev))
        if values:
            dense_out = torch.einsum("bhrn,bhrnd->bhrd", torch.exp(m_f - big_m), vb_f) / big_s[..., None]
            dense_sq = dense_out.pow(2).sum((0, 2, 3)).double()
            norm2 += dense_sq
        for ci, cand in enumerate(candidates):
            if cand.kind == "dense":
                rec[:, ci] += b * r
            elif cand.kind == "skip" and values:
                sq[:, ci] += dense_sq
        for o, cis in groups.items():
            qb_o = torch.div(invs[o][r_idx], block_size, rounding_mode="floor")
            keep = group_masks[o][:, :, qb_o, :]  # [C_o, H, r, nb]
            rec[:, cis] += (mass[o][None] * keep[:, None]).sum((1, 3, 4)).t().double()
            if not values:
                continue
            m_o, s_o, vb_o = stats[o]
            mm = m_o[None].masked_fill(~keep[:, None], float("-inf"))  # [C_o, B, H, r, nb]
            mc = mm.amax(-1, keepdim=True)
            mc = torch.where(torch.isinf(mc), torch.zeros_like(mc), mc)
            w = torch.exp(mm - mc)
            sc = (w * s_o[None]).sum(-1)  # [C_o, B, H, r]
            out = torch.einsum("cbhrn,bhrnd->cbhrd", w, vb_o) / sc.clamp_min(1e-30)[..., None]
            sq[:, cis] += (out - dense_out[None]).pow(2).sum((1, 3, 4)).t().double()
            del mm, w, out
        del stats, mass
    return LayerStats(sq.cpu(), norm2.cpu(), b * rows.numel() * d, rec.cpu(), b * rows.numel(),
                      {o: t.cpu() for o, t in colmass.items()},
                      bmap.cpu() if bmap is not None else None, brows.cpu() if brows is not None else None)
