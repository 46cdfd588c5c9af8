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
from typing import Any
from pathlib import Path

import torch

from .. import patterns as P
from ..atomic_files import saving
from ..layout import TokenLayout
from ..plan import HeadSpec
from ..torch_files import load_plain
from .candidates import Candidate, build, default_candidates
from .common import ORDERINGS, CalibrationConfig, MaskSpec, measure_layer, measure_layer_memory, sample_rows

PROFILE_FORMAT = "sparsevdit-profile"
PROFILE_VERSION = 1
_EXPECTED = "a profile written by `sparsevdit profile`"


class ProfileError(ValueError):
    """A file that is not a usable profile; the message says what it is and what was expected."""


@dataclass
class Profile:
    model: dict  # ModelSignature.to_dict()
    layout: TokenLayout
    block_size: int
    calib: Any  # CalibrationConfig (bundled) or runners.pipeline.PipelineCalibration
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
        """Tensors and plain data only (``load`` reads it with ``weights_only=True``), atomically, 0644."""
        with saving(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        """Read a profile written by ``save``; ProfileError for any other file (never runs code from it)."""
        data = load_plain(path, what=_EXPECTED, error=ProfileError)
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{path} is a torch file but not a sparsevdit profile; expected {_EXPECTED}")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{path}: profile version {data.get('version')!r}, this sparsevdit reads {PROFILE_VERSION}")
        try:
            return cls(
                data["model"], TokenLayout(**data["layout"]), data["block_size"], calibration_from_dict(data["calib"]),
                [Candidate.from_dict(c) for c in data["candidates"]], data["stripe_blocks"], data["density"],
                data["rel_err"], data["mse"], data["recall"], data["out_rms"], data["column_mass"], data["block_map"],
                data["dense_video"], data.get("settings", {}), data.get("attn_gain"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{path}: a damaged sparsevdit profile ({type(exc).__name__}: {exc}); expected {_EXPECTED}") from None


def calibration_from_dict(d: dict):
    """The calibration a profile or plan recorded: a pipeline's (``kind: pipeline``) or the bundled model's."""
    if isinstance(d, dict) and d.get("kind") == "pipeline":
        from .runners.pipeline import PipelineCalibration

        return PipelineCalibration.from_dict(d)
    return CalibrationConfig.from_dict(d)


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(), console=console, disable=not enabled, transient=False)


def run_profile(model, calib=None, *, candidates: list[Candidate] | None = None,
                rows_per_block: int | None = 8, row_seed: int = 0, block_map_max_blocks: int = 128,
                chunk_elements: int | None = None, console=None, progress: bool = True) -> Profile:
    """Profile a model on its calibration inputs with dense attention (see the module docstring).

    ``model``: a search runner (``search.runners``), or a model with its calibration (the bundled VideoDiT
    with a ``CalibrationConfig``, a diffusers pipeline with a ``PipelineCalibration``). Statistics are
    sums over every self-attention call of a (step, layer): one for the bundled model (its seeds are one
    batch), one per prompt, seed and guidance pass for a pipeline."""
    from .runners import as_runner

    runner = as_runner(model, calib)
    calib = runner.calib
    layout = runner.layout()
    sig = runner.signature()
    bs = runner.block_size
    nb = P.num_blocks(layout.num_tokens, bs)
    cands = candidates if candidates is not None else default_candidates(layout, bs)
    L, H, S = sig.num_layers, sig.num_heads, runner.steps
    rows = sample_rows(layout, bs, rows_per_block, row_seed)
    want_map = nb <= block_map_max_blocks
    total = getattr(runner, "progress_total", S)
    need = measure_layer_memory(layout, bs, H, sig.head_dim, [MaskSpec("mask")] * len(cands),
                                batch=getattr(runner, "batch", 1), device=str(runner.device), chunk_elements=chunk_elements)
    if console is not None:
        console.print(f"profiling {sig.class_name} on {layout}: about {need / 2**30:.1f} GiB of {runner.device} memory "
                      "per attention call beside the model (statistics only are kept across layers and steps)")
    if runner.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(runner.device)
        if free < need:
            raise RuntimeError(f"profiling needs about {need / 2**30:.1f} GiB of GPU memory beside the model, "
                               f"{free / 2**30:.1f} GiB are free: free GPU memory first (offload the text encoder and VAE, "
                               "fewer seeds per batch for the bundled model)")
    t0 = time.perf_counter()

    # pass 1: key-block mass only, to choose each head's stripes
    per_head = [c for c in cands if c.per_head]
    stripe_blocks = {}
    if per_head:
        mass1 = {o: torch.zeros(L, H, nb, dtype=torch.float64) for o in ORDERINGS}

        def mass_only(layer, step, q, k, v):
            st = measure_layer(q, k, v, layout, bs, rows, [], values=False, chunk_elements=chunk_elements)
            for o in ORDERINGS:
                mass1[o][layer] += st.column_mass[o] / st.rows
            return None

        with _progress(console, progress) as bar:
            task = bar.add_task("profile 1/2: key-block attention mass", total=total)
            runner.sample(capture=mass_only, progress=lambda: bar.advance(task))
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
    # sums over the calls of each (step, layer); the ratios at the end
    sq, rec = (torch.zeros(S, L, H, C, dtype=torch.float64) for _ in range(2))
    norm2 = torch.zeros(S, L, H, dtype=torch.float64)
    count, nrows = torch.zeros(S, L, dtype=torch.float64), torch.zeros(S, L, dtype=torch.float64)
    colsum = {o: torch.zeros(S, L, H, nb, dtype=torch.float64) for o in ORDERINGS}
    bmap = torch.zeros(L, H, nb, nb, dtype=torch.float64) if want_map else None
    brows = torch.zeros(nb, dtype=torch.float64) if want_map else None

    def measure(layer, s, q, k, v):
        if s >= S:
            raise RuntimeError(f"the model ran a denoising step {s} but the calibration has {S} steps: "
                               "the step counter and the sampler disagree")
        st = measure_layer(q, k, v, layout, bs, rows, layer_masks[layer], block_map=want_map, chunk_elements=chunk_elements)
        sq[s, layer] += st.sq_err
        rec[s, layer] += st.recall
        norm2[s, layer] += st.norm2
        count[s, layer] += st.count
        nrows[s, layer] += st.rows
        for o in ORDERINGS:
            colsum[o][s, layer] += st.column_mass[o]
        if want_map:
            bmap[layer] += st.block_map
            if layer == 0:
                brows.add_(st.block_rows)
        return None

    label = "profile 2/2: candidate errors" if per_head else "profile: candidate errors"
    gain = torch.ones(S, L)
    with runner.recording_gain(gain), _progress(console, progress) as bar:
        task = bar.add_task(label, total=total)
        video = runner.sample(capture=measure, progress=lambda: bar.advance(task))
    seen = nrows > 0
    if not bool(seen.all()):
        missing = [(int(s), int(l)) for s, l in (~seen).nonzero()[:5]]
        raise RuntimeError(f"no self-attention call was seen at (step, layer) {missing}: the profile would be incomplete")
    rel = (sq / norm2.clamp_min(1e-30)[..., None]).sqrt().float()
    mse = (sq / count[..., None, None]).float()
    recall = (rec / nrows[..., None, None]).float()
    out_rms = (norm2 / count[..., None]).sqrt().float()
    colmass = {o: (colsum[o] / nrows[..., None, None]).float() for o in ORDERINGS}
    block_map = (bmap / brows.clamp_min(1)[None, None, :, None]).float() if want_map else None
    return Profile(
        sig.to_dict(), layout, bs, calib, cands, stripe_blocks, density, rel, mse, recall, out_rms,
        colmass, block_map, video,
        {"rows_per_block": rows_per_block, "row_seed": row_seed, "rows_measured": int(rows.numel()),
         "seconds": time.perf_counter() - t0, "device": str(runner.device), "runner": runner.name,
         "dtype": str(_dtype(runner))},
        gain,
    )


def _dtype(runner) -> torch.dtype:
    model = getattr(runner, "model", None) or runner.pipe.transformer
    return next(model.parameters()).dtype
