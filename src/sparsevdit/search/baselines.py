"""Baselines the searches are compared against on the bundled model.

- ``uniform_plan``: every head of every layer at every step the same pattern (all diagonal, or all
  multi_diagonal, at one width).
- ``svg_sample``: Sparse VideoGen's online per-head choice. At every step (after ``warmup_steps``
  dense ones) and every layer, ``probe_rows`` query rows are drawn at random; each head's output on
  them under the spatial mask (a diagonal band plus the first frame as sink keys) and under the
  temporal mask (a multi-diagonal band, i.e. the same place in every frame) is compared with dense by
  MSE, and the head runs the mask with the lower error. The probe itself costs about
  ``probe_rows / N`` of a dense head; it is not counted in the predicted time.
"""

from __future__ import annotations

import torch

from .. import patterns as P
from ..plan import SparsityPlan
from .candidates import band_width
from .common import CalibrationConfig, MaskSpec, capturing, measure_layer, sample_video
from .cost import CostModel


def uniform_plan(model, calib: CalibrationConfig, pattern: str, **params) -> SparsityPlan:
    from ..integrations.bundled import model_signature

    plan = SparsityPlan.uniform(model_signature(model), calib.layout(model), pattern, params, block_size=calib.block_size)
    plan.metadata = {"algorithm": f"uniform {pattern}", "params": params}
    return plan


def svg_masks(layout, block_size: int, density: float) -> tuple[P.BlockPattern, P.BlockPattern]:
    """SVG's spatial (diagonal + first-frame sink) and temporal (multi-diagonal) masks near ``density``."""
    def spatial(w):
        return P.build("union", layout, block_size=block_size, patterns=[
            {"name": "diagonal", "params": {"width": w}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}])

    # the diagonal whose union with the sink lands nearest the density
    sp = spatial(P.width_for_density(lambda w: spatial(w).density, density, 2 * layout.num_tokens))
    tp = P.build("multi_diagonal", layout, block_size=block_size, width=band_width("multi_diagonal", layout, block_size, density))
    return sp, tp


def svg_sample(model, calib: CalibrationConfig, *, density: float = 0.2, warmup_steps: int = 0, probe_rows: int = 32,
               seeds=None, classes=None, cost: CostModel | None = None, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Sample ``seeds`` with SVG's online choice; returns (video, stats: density, relative time, choices)."""
    cost = cost or CostModel.flops()
    layout = calib.layout(model)
    spatial, temporal = svg_masks(layout, calib.block_size, density)
    masks = [MaskSpec.of(spatial), MaskSpec.of(temporal)]
    n, L, H = layout.num_tokens, model.cfg.depth, model.cfg.heads
    gen = torch.Generator().manual_seed(seed)
    state = {"step": 0}
    acc = {"density": 0.0, "time": 0.0, "calls": 0, "spatial": 0, "temporal": 0}

    def make_hook(layer, attn):
        def hook(q, k, v):
            acc["calls"] += 1
            if state["step"] < warmup_steps:
                attn.patterns = None
                acc["density"] += 1.0
                acc["time"] += 1.0
                return
            rows = torch.sort(torch.randperm(n, generator=gen)[:probe_rows]).values
            st = measure_layer(q, k, v, layout, calib.block_size, rows, masks)
            pick = [spatial if float(st.mse[h, 0]) <= float(st.mse[h, 1]) else temporal for h in range(H)]
            acc["spatial"] += sum(p is spatial for p in pick)
            acc["temporal"] += sum(p is temporal for p in pick)
            attn.patterns, attn.backend = pick, calib.backend
            acc["density"] += sum(p.density for p in pick) / H
            acc["time"] += cost.layer_time(pick)
        return hook

    def on_step(i):
        state["step"] = i

    with capturing(model, make_hook):
        video = sample_video(model, calib, seeds=seeds, classes=classes, on_step=on_step)
    calls = max(acc["calls"], 1)
    heads = max(acc["spatial"] + acc["temporal"], 1)
    stats = {"density": acc["density"] / calls, "relative_time": acc["time"] / calls,
             "spatial_fraction": acc["spatial"] / heads, "spatial_density": spatial.density,
             "temporal_density": temporal.density}
    return video, stats
