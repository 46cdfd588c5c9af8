"""Profiling: what the budget search needs, measured on the model's own dense sampling run.

``run_profile(model, calib)`` runs the sampler with dense attention on the calibration seeds and, at
every (step, layer, head), measures on sampled query rows (``rows_per_block`` per query block; every
row when None) with ``common.measure_layer``:

- each candidate's relative output error ``||O_c - O_dense|| / ||O_dense||`` and MSE on the same
  Q/K/V (averaged over the batch: calibration seeds x {conditional, unconditional});
- each candidate's recall (attention mass of the dense map it keeps);
- the attention mass of each key block (frame-major and position-major block order), and the
  block-pooled attention map averaged over steps when it is small (``block_map_max_blocks``).

Memory: logits of at most ``chunk_elements`` at a time, per-block partial sums, and per-head results;
never an ``N x N`` map. Where per-head stripe candidates are in the set, a first dense pass measures
only the key-block mass, each head's stripes are the blocks it attended most (mean over steps and
samples), and the second pass measures every candidate with exactly those stripes; both passes run
the same deterministic dense trajectory.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import patterns as P
from ..layout import TokenLayout
from ..plan import HeadSpec
from .candidates import Candidate, build, default_candidates
from .common import ORDERINGS, CalibrationConfig, MaskSpec, capturing, measure_layer, sample_rows, sample_video

PROFILE_FORMAT = "sparsevdit-profile"
PROFILE_VERSION = 1


@dataclass
class Profile:
    model: dict  # ModelSignature.to_dict()
    layout: TokenLayout
    block_size: int
    calib: CalibrationConfig
    candidates: list[Candidate]
    stripe_blocks: dict  # ordering -> int64 [L, H, k_max]: each head's key blocks by measured mass, most first
    density: torch.Tensor  # [L, H, C]
    rel_err: torch.Tensor  # [S, L, H, C]
    mse: torch.Tensor  # [S, L, H, C]
    recall: torch.Tensor  # [S, L, H, C]
    out_rms: torch.Tensor  # [S, L, H] RMS of the dense attention output
    column_mass: dict  # ordering -> [S, L, H, blocks]: mean attention mass per key block
    block_map: torch.Tensor | None  # [L, H, q_blocks, kv_blocks] mean over steps, or None (too large)
    dense_video: torch.Tensor  # [seeds, 3, T, H, W] the dense sampler's output on the calibration seeds
    settings: dict = field(default_factory=dict)
    attn_gain: torch.Tensor | None = None  # [S, L] mean squared gate on the attention branch (1 where none)

    @property
    def steps(self) -> int:
        return self.rel_err.shape[0]

    @property
    def num_layers(self) -> int:
        return self.rel_err.shape[1]

    @property
    def num_heads(self) -> int:
        return self.rel_err.shape[2]

    def spec(self, c: int, layer: int, head: int) -> HeadSpec:
        cand = self.candidates[c]
        if not cand.per_head:
            return cand.spec()
        blocks = self.stripe_blocks[cand.stripe_ordering][layer, head, : cand.stripes].tolist()
        return cand.spec(blocks)

    def labels(self) -> list[str]:
        return [c.label for c in self.candidates]

    # serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "model": self.model, "layout": self.layout.to_dict(),
            "block_size": self.block_size, "calib": self.calib.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates], "stripe_blocks": self.stripe_blocks,
            "density": self.density, "rel_err": self.rel_err, "mse": self.mse, "recall": self.recall,
            "out_rms": self.out_rms, "column_mass": self.column_mass, "block_map": self.block_map,
            "dense_video": self.dense_video, "settings": self.settings, "attn_gain": self.attn_gain,
        }

    def save(self, path: str | os.PathLike) -> Path:
        from ..atomic_files import saving

        with saving(path) as tmp:  # an interrupted save leaves the old profile and no temp file
            torch.save(self.to_dict(), tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"{path} is not a sparsevdit profile (write one with `sparsevdit profile`)")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"{path}: profile version {data.get('version')!r}, this sparsevdit reads {PROFILE_VERSION}")
        return cls(
            data["model"], TokenLayout(**data["layout"]), data["block_size"], CalibrationConfig.from_dict(data["calib"]),
            [Candidate.from_dict(c) for c in data["candidates"]], data["stripe_blocks"], data["density"],
            data["rel_err"], data["mse"], data["recall"], data["out_rms"], data["column_mass"], data["block_map"],
            data["dense_video"], data.get("settings", {}), data.get("attn_gain"),
        )


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(), console=console, disable=not enabled, transient=False)


def run_profile(model, calib: CalibrationConfig, *, candidates: list[Candidate] | None = None,
                rows_per_block: int | None = 8, row_seed: int = 0, block_map_max_blocks: int = 128,
                chunk_elements: int | None = None, console=None, progress: bool = True) -> Profile:
    """Profile ``model`` on ``calib``'s seeds with dense attention (see the module docstring)."""
    from ..integrations.bundled import model_signature

    layout = calib.layout(model)
    bs = calib.block_size
    nb = P.num_blocks(layout.num_tokens, bs)
    cands = candidates if candidates is not None else default_candidates(layout, bs)
    L, H, S = model.cfg.depth, model.cfg.heads, calib.steps
    rows = sample_rows(layout, bs, rows_per_block, row_seed)
    want_map = nb <= block_map_max_blocks
    t0 = time.perf_counter()

    state = {"step": 0}

    def on_step(i):
        state["step"] = i

    # pass 1: key-block mass only, to choose each head's stripes
    per_head = [c for c in cands if c.per_head]
    stripe_blocks = {}
    if per_head:
        mass1 = {o: torch.zeros(L, H, nb, dtype=torch.float64) for o in ORDERINGS}

        def make_mass_hook(layer, attn):
            def hook(q, k, v):
                st = measure_layer(q, k, v, layout, bs, rows, [], values=False, chunk_elements=chunk_elements)
                for o in ORDERINGS:
                    mass1[o][layer] += st.column_mass[o] / st.rows
            return hook

        with _progress(console, progress) as bar:
            task = bar.add_task("profile 1/2: key-block attention mass", total=S)
            with capturing(model, make_mass_hook):
                sample_video(model, calib, on_step=on_step, progress=lambda: bar.advance(task))
        k_max = max(c.stripes for c in per_head)
        for o in ORDERINGS:
            stripe_blocks[o] = torch.topk(mass1[o], min(k_max, nb), dim=-1).indices

    # candidate masks per layer
    layer_masks, density = [], torch.zeros(L, H, len(cands))
    for layer in range(L):
        specs = []
        for ci, c in enumerate(cands):
            if c.per_head:
                pats = [build(c, layout, bs, stripe_blocks[c.stripe_ordering][layer, h, : c.stripes].tolist()) for h in range(H)]
            else:
                pats = [build(c, layout, bs)] * H
            density[layer, :, ci] = torch.tensor([p.density for p in pats])
            specs.append(MaskSpec.of(pats))
        layer_masks.append(specs)

    C = len(cands)
    rel, mse, rec = (torch.zeros(S, L, H, C) for _ in range(3))
    out_rms = torch.zeros(S, L, H)
    colmass = {o: torch.zeros(S, L, H, nb) for o in ORDERINGS}
    bmap = torch.zeros(L, H, nb, nb, dtype=torch.float64) if want_map else None
    brows = torch.zeros(nb, dtype=torch.float64) if want_map else None

    def make_hook(layer, attn):
        def hook(q, k, v):
            s = state["step"]
            st = measure_layer(q, k, v, layout, bs, rows, layer_masks[layer], block_map=want_map,
                               chunk_elements=chunk_elements)
            rel[s, layer], mse[s, layer], rec[s, layer] = st.rel_err.float(), st.mse.float(), st.mean_recall.float()
            out_rms[s, layer] = (st.norm2 / max(st.count, 1)).sqrt().float()
            for o in ORDERINGS:
                colmass[o][s, layer] = (st.column_mass[o] / st.rows).float()
            if want_map:
                bmap[layer] += st.block_map
                if layer == 0:
                    brows.add_(st.block_rows)
        return hook

    label = "profile 2/2: candidate errors" if per_head else "profile: candidate errors"
    gain = torch.ones(S, L)
    handles = [blk.register_forward_pre_hook(_gain_hook(gain, state, layer))
               for layer, blk in enumerate(getattr(model, "blocks", [])) if hasattr(blk, "modulation")]
    try:
        with _progress(console, progress) as bar:
            task = bar.add_task(label, total=S)
            with capturing(model, make_hook):
                video = sample_video(model, calib, on_step=on_step, progress=lambda: bar.advance(task))
    finally:
        for hd in handles:
            hd.remove()
    block_map = (bmap / brows.clamp_min(1)[None, None, :, None]).float() if want_map else None
    return Profile(
        model_signature(model).to_dict(), layout, bs, calib, cands, stripe_blocks, density, rel, mse, rec, out_rms,
        colmass, block_map, video,
        {"rows_per_block": rows_per_block, "row_seed": row_seed, "rows_measured": int(rows.numel()),
         "seconds": time.perf_counter() - t0, "device": str(next(model.parameters()).device),
         "dtype": str(next(model.parameters()).dtype)},
        gain,
    )


def _gain_hook(gain: torch.Tensor, state: dict, layer: int):
    """Record the mean squared adaLN gate of a block's attention branch (the bundled VideoDiT's
    ``Block.forward(x, temb, ...)``: ``x + gate1 * attn(...)``, gate1 the third of six modulation chunks):
    an attention error reaches the residual stream multiplied by it."""
    def hook(block, args):
        temb = args[1]
        gate = block.modulation(temb).chunk(6, -1)[2]
        gain[state["step"], layer] = float(gate.float().pow(2).mean())
    return hook
