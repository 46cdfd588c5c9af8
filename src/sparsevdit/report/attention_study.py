"""Attention study of the bundled model: what its heads attend to, as block-pooled maps and labels.

A sampling run with dense attention is observed at an early, a middle and the last step. For every
layer and head the token-level attention probabilities are computed in chunks of query rows (never
the whole N x N at once) and
- pooled into a block map (mean probability mass per query row, per key block), drawn on a log scale;
- scored by *recall*: the share of attention mass each candidate pattern keeps, all at about the
  same density: diagonal (spatial window), multi_diagonal (same place in other frames), and
  vertical stripes (the head's own top key blocks by column mass). The head is labelled with the
  pattern of highest recall, or "other" when none keeps half of the mass.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .. import patterns as P
from ..atomic_files import building_folder, write_json
from ..models.vdit import SamplerConfig, sample
from ..models.weights import load_weights

LABELS = ("diagonal", "multi_diagonal", "stripes", "other")
MIN_RECALL = 0.5


def _frame_major_mask(pattern: P.BlockPattern) -> torch.Tensor:
    inv = pattern.layout.inverse_permutation(pattern.ordering)
    return pattern.token_mask()[inv][:, inv]


def head_statistics(q: torch.Tensor, k: torch.Tensor, layout, block_size: int, masks: dict, chunk: int = 512):
    """For q, k [H, N, D]: block-pooled maps [H, QB, KB] and recall [H] of every mask in ``masks``."""
    h, n, d = q.shape
    nb = math.ceil(n / block_size)
    dev = q.device  # on the tensors' device: a GPU capture is pooled there
    pooled = torch.zeros(h, nb, nb, device=dev)
    recall = {name: torch.zeros(h, device=dev) for name in masks}
    col_mass = torch.zeros(h, nb, device=dev)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        probs = torch.softmax((q[:, rows].float() @ k.float().transpose(-1, -2)) / math.sqrt(d), -1)  # [H, c, N]
        pad = nb * block_size - n
        per_block = torch.nn.functional.pad(probs, (0, pad)).view(h, probs.shape[1], nb, block_size).sum(-1)
        qb = torch.arange(rows.start, rows.stop, device=dev) // block_size
        pooled.index_add_(1, qb, per_block)
        col_mass += per_block.sum(1)
        for name, mask in masks.items():
            m = mask[rows] if mask.dim() == 2 else mask[:, rows]
            recall[name] += (probs * m).sum((-1, -2))
    counts = torch.bincount(torch.arange(n, device=dev) // block_size, minlength=nb).float()
    pooled /= counts[None, :, None]
    return pooled, {name: r / n for name, r in recall.items()}, col_mass / n


def run_study(out, *, weights=None, frames=16, size=64, steps=16, seed=0, cls=7, block_size=64, console=None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    console = console or Console()
    with building_folder(out) as tmp:  # the maps and study.json land together or not at all
        study = _study(tmp, plt, weights, frames, size, steps, seed, cls, block_size, console)
    console.print(f"wrote {Path(out)}/study.json and {', '.join(study['figures'])}")
    return study


def _study(out: Path, plt, weights, frames, size, steps, seed, cls, block_size, console: Console) -> dict:
    model = load_weights(weights)
    layout = model.cfg.layout(frames, size, size)
    observe = sorted({0, steps // 2, steps - 1})
    captured: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    state = {"step": -1}

    def make_capture(layer):
        def capture(q, k, v):
            if state["step"] in observe:
                captured[(state["step"], layer)] = (q[0].detach().clone(), k[0].detach().clone())  # conditional half
        return capture

    for i, attn in enumerate(model.attention_modules()):
        attn.capture = make_capture(i)
    console.print(f"sampling {layout} with dense attention, observing steps {observe}")
    sample(model, torch.tensor([cls]), frames=frames, height=size, width=size, seeds=[seed],
           sampler=SamplerConfig(steps=steps), on_step=lambda s: state.update(step=s))
    for attn in model.attention_modules():
        attn.capture = None

    diag = P.build("diagonal", layout, block_size=block_size, width=2 * layout.tokens_per_frame)
    multi = P.build("multi_diagonal", layout, block_size=block_size, width=2 * layout.tokens_per_frame)
    density = (diag.density + multi.density) / 2
    fixed = {"diagonal": _frame_major_mask(diag), "multi_diagonal": _frame_major_mask(multi)}
    nb = diag.num_q_blocks
    n_stripes = max(1, round(density * nb))

    heads = model.cfg.heads
    records, figures = [], []
    for step in observe:
        fig, axes = plt.subplots(model.cfg.depth, heads, figsize=(1.6 * heads, 1.6 * model.cfg.depth), dpi=90)
        for layer in range(model.cfg.depth):
            q, k = captured[(step, layer)]
            pooled, recall, col_mass = head_statistics(q, k, layout, block_size, fixed)
            # Stripes: each head's own top key blocks by column mass, at the same density.
            stripe_masks = []
            for h in range(heads):
                top = col_mass[h].topk(n_stripes).indices.tolist()
                stripe = P.build("vertical_stripe", layout, block_size=block_size, blocks=sorted(top))
                stripe_masks.append(stripe.token_mask())
            _, stripe_recall, _ = head_statistics(q, k, layout, block_size, {"stripes": torch.stack(stripe_masks)})
            recall["stripes"] = stripe_recall["stripes"]
            for h in range(heads):
                scores = {name: float(recall[name][h]) for name in ("diagonal", "multi_diagonal", "stripes")}
                best = max(scores, key=scores.get)
                label = best if scores[best] >= MIN_RECALL else "other"
                records.append({"step": step, "layer": layer, "head": h, "label": label, "recall": scores})
                ax = axes[layer, h]
                ax.imshow(pooled[h].clamp(min=1e-6).log10().numpy(), cmap="magma", vmin=-6, vmax=0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"L{layer} H{h}: {label.replace('multi_diagonal', 'multi-diag')}", fontsize=6)
        fig.suptitle(f"bundled VideoDiT, step {step + 1}/{steps}: block-pooled attention (log10, {block_size}-token blocks)", fontsize=8)
        fig.tight_layout()
        path = out / f"maps-step{step + 1:02d}.png"
        fig.savefig(path)
        plt.close(fig)
        figures.append(path.name)

    counts = {step: {label: sum(1 for r in records if r["step"] == step and r["label"] == label) for label in LABELS} for step in observe}
    study = {"layout": layout.to_dict(), "block_size": block_size, "steps": steps, "observed_steps": observe,
             "seed": seed, "class": cls, "pattern_density": density, "min_recall": MIN_RECALL,
             "counts": {str(k): v for k, v in counts.items()}, "heads": records, "figures": figures}
    write_json(out / "study.json", study)
    table = Table(title=f"heads per pattern (recall at density {density:.1%}, label needs >= {MIN_RECALL})")
    table.add_column("step")
    for label in LABELS:
        table.add_column(label, justify="right")
    for step, c in counts.items():
        table.add_row(f"{step + 1}/{steps}", *(str(c[label]) for label in LABELS))
    console.print(table)
    return study
