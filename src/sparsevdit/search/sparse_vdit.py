"""``sparse-vdit``: the offline search of Sparse-vDiT (2025), implemented as the paper states it.

Modes per head: M0 dense, M1 skip, M2 diagonal, M3 multi-diagonal, M4 vertical-stripe, each at one
fixed density chosen in advance (``mode_density``, 0.2 by default; the paper gives none: ours):
diagonal and multi_diagonal bands whose width lands nearest that density, and vertical stripes
over the first ``round(mode_density * frames)`` frames (global sink keys; at least one frame).

Greedy and sequential: the sampler runs on the calibration seeds; at every step and every layer, in
order, on that layer's actual Q/K/V (which carry the error of the modes already chosen upstream and
at earlier steps), every mode's output is computed for every head and scored

    loss(mode) = MSE(O_mode, O_dense) + lambda * cost(mode)

with ``cost`` the mode's relative kernel time from the cost model (dense = 1, skip = 0; the paper's
"hardware-aware" cost is this lambda term). A head keeps dense when every sparse mode's loss exceeds
``epsilon``; otherwise it takes the sparse mode with the lowest loss. The chosen patterns then run in
the layer, so the chosen output feeds the next layers and steps. MSE is over the batch (calibration
seeds x conditional/unconditional), rows and head_dim; on every query row by default
(``rows_per_block=None``), on sampled rows at large sizes.

Step ranges: modes are chosen per step; a layer's consecutive steps with identical choices merge into
one plan entry (all-dense runs get none). Applying the plan to the calibration seeds reproduces the
search's own sampling run exactly.
"""

from __future__ import annotations

import math

import time
from collections import Counter
from dataclasses import asdict, dataclass

import torch

from .. import patterns as P
from ..layout import TokenLayout
from ..metrics import video_psnr_ssim
from ..plan import HeadSpec, LayerEntry, SparsityPlan
from .candidates import band_width
from .common import MaskSpec, measure_layer, sample_rows
from .cost import CostModel, family_of
from ..atomic_files import finite_or_none as _finite

MODES = ("dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe")


@dataclass
class SparseVDiTSettings:
    lam: float = 0.5
    epsilon: float = 1.0
    mode_density: float = 0.2
    rows_per_block: int | None = None

    def __post_init__(self):
        # NaN passes every comparison: each value is checked to be a finite number in its range
        checks = (("lam", self.lam, self.lam >= 0, ">= 0"), ("epsilon", self.epsilon, self.epsilon > 0, "> 0"),
                  ("mode_density", self.mode_density, 0 < self.mode_density <= 1, "in (0, 1]"))
        for name, value, ok, allowed in checks:
            if not (math.isfinite(value) and ok):
                raise ValueError(f"sparse-vdit search: {name} must be a finite number {allowed}, got {value}")
        if self.rows_per_block is not None and self.rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1 (or None: every row), got {self.rows_per_block}")


def mode_specs(layout: TokenLayout, block_size: int, density: float) -> dict[str, HeadSpec]:
    """The five modes at one fixed density."""
    sink = max(1, min(layout.frames, round(density * layout.frames)))
    return {
        "dense": HeadSpec("dense", {}),
        "skip": HeadSpec("skip", {}),
        "diagonal": HeadSpec("diagonal", {"width": band_width("diagonal", layout, block_size, density)}),
        "multi_diagonal": HeadSpec("multi_diagonal", {"width": band_width("multi_diagonal", layout, block_size, density)}),
        "vertical_stripe": HeadSpec("vertical_stripe", {"sink_frames": sink}),
    }


def merge_steps(choices: list[list[tuple]], specs: dict[str, HeadSpec], steps: int) -> list[LayerEntry]:
    """Per-step choices ``choices[step][layer] = (mode per head)`` to plan entries (see module doc)."""
    entries = []
    layers = len(choices[0]) if choices else 0
    for layer in range(layers):
        start = 0
        for step in range(1, steps + 1):
            if step < steps and choices[step][layer] == choices[start][layer]:
                continue
            modes = choices[start][layer]
            if any(m != "dense" for m in modes):
                entries.append(LayerEntry(layer, tuple(specs[m] for m in modes), start, None if step >= steps else step))
            start = step
    return entries


def sparse_vdit_search(model, calib=None, settings: SparseVDiTSettings = SparseVDiTSettings(), *,
                       cost: CostModel | None = None, dense_video: torch.Tensor | None = None, console=None,
                       progress: bool = True) -> SparsityPlan:
    """Run the search; returns the plan (metadata: choices, expected density/speedup, calibration PSNR).

    ``model``: a search runner, or a model with its calibration (``search.runners.as_runner``). Where
    a (step, layer) is called more than once (a pipeline's prompts and seeds, one call each), the first
    call chooses and the later ones run that choice."""
    from .profile import _progress
    from .runners import as_runner

    runner = as_runner(model, calib)
    calib = runner.calib
    cost = cost or CostModel.flops()
    layout = runner.layout()
    sig = runner.signature()
    bs = runner.block_size
    specs = mode_specs(layout, bs, settings.mode_density)
    pats = {m: P.build(s.pattern, layout, block_size=bs, **s.params) for m, s in specs.items()}
    mode_cost = torch.tensor([cost.head_time(family_of(s.pattern, s.params), pats[m].density) if m != "dense" else 1.0
                              for m, s in specs.items()])
    masks = [MaskSpec.of(pats[m]) for m in MODES]
    rows = sample_rows(layout, bs, settings.rows_per_block)
    L, H, S = sig.num_layers, sig.num_heads, runner.steps
    choices = [[None] * L for _ in range(S)]
    losses = torch.zeros(S, L, H, len(MODES))

    def choose(layer, step, q, k, v):
        if choices[step][layer] is None:
            st = measure_layer(q, k, v, layout, bs, rows, masks)
            loss = st.mse.float() + settings.lam * mode_cost[None, :]
            losses[step, layer] = loss
            picked = []
            for h in range(H):
                sparse = loss[h, 1:]
                if bool((sparse > settings.epsilon).all()):
                    picked.append("dense")
                else:
                    picked.append(MODES[1 + int(torch.argmin(sparse))])
            choices[step][layer] = tuple(picked)
        picked = choices[step][layer]
        return None if all(m == "dense" for m in picked) else [pats[m] for m in picked]

    t0 = time.perf_counter()
    with _progress(console, progress) as bar:
        task = bar.add_task("sparse-vdit: sequential greedy search", total=getattr(runner, "progress_total", S))
        video = runner.sample(capture=choose, progress=lambda: bar.advance(task))
    seconds = time.perf_counter() - t0
    missing = [(s, l) for s in range(S) for l in range(L) if choices[s][l] is None]
    if missing:
        raise RuntimeError(f"no self-attention call was seen at (step, layer) {missing[:5]}: the search is incomplete")
    plan = SparsityPlan(sig, layout, bs, merge_steps(choices, specs, S))
    if dense_video is None:
        dense_video = runner.sample()
    quality = video_psnr_ssim(video, dense_video)
    pred = cost.plan_time(plan, S)
    counts = Counter(m for per_step in choices for per_layer in per_step for m in per_layer)
    total = S * L * H
    plan.metadata = {
        "algorithm": "sparse-vdit",
        "settings": asdict(settings),
        "modes": {m: {**s.to_dict(), "density": pats[m].density, "cost": float(c)} for (m, s), c in zip(specs.items(), mode_cost)},
        "calibration": calib.to_dict(),
        "cost_model": cost.describe(),
        "expected_density": pred["density"],
        "expected_relative_time": pred["relative_time"],
        "expected_speedup": pred["speedup"],
        "mode_fractions": {m: counts[m] / total for m in MODES},
        "calibration_psnr": _finite(quality["psnr"]),
        "calibration_ssim": quality["ssim"],
        "search_seconds": seconds,
    }
    return plan
