"""`sparsevdit patterns study`: every pattern's attention error on synthetic heads of known structure.

Q and K are built from smooth 3-D position features, so each synthetic head has one of the
structures Sparse-vDiT reports in real video DiTs: a spatial window, the same place across frames,
global sink keys, or diffuse attention. For every head the demo measures each candidate pattern's
relative output error against dense attention and picks the cheapest pattern under an error budget.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from .. import patterns as P
from ..atomic_files import building_folder, write_json, write_text
from ..kernels import sparse_attention
from ..layout import TokenLayout

HEAD_KINDS = ("spatial", "temporal", "sink", "diffuse")


def _fourier(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    proj = coords @ freqs  # [N, F]
    return torch.cat([proj.cos(), proj.sin()], -1)


def structured_qkv(layout: TokenLayout, head_dim: int, gen: torch.Generator):
    """q, k, v [1, 4, N, D]: one head per HEAD_KINDS entry."""
    t, y, x = torch.meshgrid(
        torch.arange(layout.frames), torch.arange(layout.height), torch.arange(layout.width), indexing="ij"
    )
    coords = torch.stack([t, y, x], -1).reshape(-1, 3).float()
    n, half = coords.shape[0], head_dim // 2
    qs, ks = [], []
    for kind in HEAD_KINDS:
        if kind == "spatial":  # sharp in space and time: a window around the diagonal
            w = torch.randn(3, half, generator=gen) * torch.tensor([[1.2], [0.9], [0.9]])
        elif kind == "temporal":  # blind to time: the same place in every frame
            w = torch.randn(3, half, generator=gen) * torch.tensor([[0.0], [0.9], [0.9]])
        else:
            w = torch.randn(3, half, generator=gen) * 0.05
        f = _fourier(coords, w)
        q = f * 2.2 + 0.3 * torch.randn(n, head_dim, generator=gen)
        k = f * 2.2 + 0.3 * torch.randn(n, head_dim, generator=gen)
        if kind == "sink":  # keys of frame 0 align with every query
            common = torch.randn(head_dim, generator=gen)
            q = q + common * 0.9
            k[: layout.tokens_per_frame] += common * 0.9
        if kind == "diffuse":
            q, k = torch.randn(n, head_dim, generator=gen) * 0.3, torch.randn(n, head_dim, generator=gen) * 0.3
        qs.append(q)
        ks.append(k)
    v = torch.randn(1, len(HEAD_KINDS), n, head_dim, generator=gen)
    return torch.stack(qs)[None], torch.stack(ks)[None], v


def candidates(layout: TokenLayout, block_size: int) -> list[P.BlockPattern]:
    f = layout.tokens_per_frame
    specs = [("dense", {}), ("skip", {}), ("vertical_stripe", {"sink_frames": 1})]
    specs += [("diagonal", {"width": w}) for w in (f // 2, f, 2 * f)]
    specs += [("multi_diagonal", {"width": w}) for w in (layout.frames * 4, layout.frames * 12, layout.frames * 32)]
    specs += [("union", {"patterns": [{"name": "diagonal", "params": {"width": f}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}]})]
    return [P.build(name, layout, block_size=block_size, **params) for name, params in specs]


def label(p: P.BlockPattern) -> str:
    if p.name == "union":
        return "diagonal+stripes"
    if "width" in p.params:
        return f"{p.name}(width={p.params['width']})"
    return p.name


def run_pattern_study(out: Path, *, device: str = "auto", seed: int = 0, console: Console | None = None, error_budget: float = 0.25) -> dict:
    console = console or Console()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with building_folder(out) as tmp:  # the pictures and the report land together or not at all
        report = _study(tmp, device, seed, console, error_budget)
    console.print(f"wrote {Path(out) / 'report.html'}, {Path(out) / 'report.json'} and "
                  f"{len(report['candidates']) + len(report['attention_maps'])} pictures")
    return report


def _study(out: Path, device: str, seed: int, console: Console, error_budget: float) -> dict:
    (out / "patterns").mkdir(parents=True, exist_ok=True)
    layout, block_size, head_dim = TokenLayout(8, 16, 16), 64, 64
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (t.to(device) for t in structured_qkv(layout, head_dim, gen))
    dense = P.build("dense", layout, block_size=block_size)
    t0 = time.perf_counter()
    ref = sparse_attention(q, k, v, dense, layout=layout, backend="reference")
    dense_seconds = time.perf_counter() - t0

    from .pictures import save_block_mask_png

    cands = candidates(layout, block_size)
    results = []
    for pat in track(cands, description="patterns vs dense", console=console):
        out_p = sparse_attention(q, k, v, pat, layout=layout, backend="auto")
        errors = ((out_p - ref).flatten(2).norm(dim=-1) / ref.flatten(2).norm(dim=-1))[0].tolist()
        png = save_block_mask_png(pat, out / "patterns" / f"{label(pat).replace('(', '_').replace(')', '').replace('=', '')}.png")
        results.append({"pattern": label(pat), "density": pat.density, "rel_error": dict(zip(HEAD_KINDS, errors)), "png": str(png.relative_to(out))})

    choice = {}
    for h, kind in enumerate(HEAD_KINDS):
        ok = [r for r in results if r["rel_error"][kind] <= error_budget]
        best = min(ok, key=lambda r: r["density"])
        choice[kind] = {"pattern": best["pattern"], "density": best["density"], "rel_error": best["rel_error"][kind]}

    maps = _attention_maps(q, k, layout, block_size, out)
    report = {
        "layout": layout.to_dict(), "block_size": block_size, "head_dim": head_dim, "device": device, "seed": seed,
        "error_budget": error_budget, "dense_seconds": dense_seconds, "candidates": results, "choice_per_head": choice,
        "attention_maps": maps,
        "mean_density_of_choice": sum(c["density"] for c in choice.values()) / len(choice),
    }
    write_json(out / "report.json", report)
    _write_html(report, out / "report.html")

    table = Table(title=f"relative output error vs dense attention ({layout}, blocks of {block_size})")
    table.add_column("pattern")
    table.add_column("density", justify="right")
    for kind in HEAD_KINDS:
        table.add_column(f"{kind} head", justify="right")
    for r in results:
        table.add_row(r["pattern"], f"{r['density']:.1%}", *(f"{r['rel_error'][k]:.3f}" for k in HEAD_KINDS))
    console.print(table)
    for kind, c in choice.items():
        console.print(f"{kind:9s} head -> {c['pattern']} (density {c['density']:.1%}, error {c['rel_error']:.3f} <= {error_budget})")
    return report


def _attention_maps(q, k, layout, block_size, out: Path) -> list[str]:
    """Block-pooled dense attention map of each head (what the patterns approximate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = math.ceil(layout.num_tokens / block_size)
    probs = torch.softmax(q[0].float() @ k[0].float().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1).cpu()
    pooled = torch.nn.functional.avg_pool2d(probs[:, None], block_size)[:, 0] if layout.num_tokens % block_size == 0 else None
    paths = []
    fig, axes = plt.subplots(1, len(HEAD_KINDS), figsize=(3.2 * len(HEAD_KINDS), 3.4), dpi=100)
    for ax, kind, m in zip(axes, HEAD_KINDS, pooled if pooled is not None else probs):
        ax.imshow(m.log10().clamp(min=-8).numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"{kind} head (log10, {nb}x{nb} blocks)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = out / "attention_maps.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path.name)
    return paths


def _write_html(report: dict, path: Path) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(r['pattern'])}</td><td>{r['density']:.1%}</td>"
        + "".join(f"<td>{r['rel_error'][k]:.3f}</td>" for k in HEAD_KINDS)
        + f"<td><img src='{r['png']}' width=160></td></tr>"
        for r in report["candidates"]
    )
    choice = "".join(
        f"<li><b>{k}</b> head: {html.escape(c['pattern'])} (density {c['density']:.1%}, error {c['rel_error']:.3f})</li>"
        for k, c in report["choice_per_head"].items()
    )
    heads = "".join(f"<th>{k} head error</th>" for k in HEAD_KINDS)
    write_text(
        path,
        f"""<!doctype html><html><head><meta charset="utf-8"><title>sparsevdit pattern study</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:4px}} table{{border-collapse:collapse}}</style>
</head><body><h1>sparsevdit pattern study: patterns vs dense attention</h1>
<p>Layout {report['layout']}, blocks of {report['block_size']} tokens, device {report['device']}.
Synthetic heads with the structures Sparse-vDiT reports; error = ||O_pattern - O_dense|| / ||O_dense||.</p>
<h2>Dense attention maps (block-pooled)</h2><img src="attention_maps.png">
<h2>Cheapest pattern per head with error &le; {report['error_budget']}</h2><ul>{choice}</ul>
<p>Mean density of the choice: {report['mean_density_of_choice']:.1%}</p>
<h2>All candidates</h2><table><tr><th>pattern</th><th>density</th>{heads}<th>block mask</th></tr>{rows}</table>
</body></html>"""
    )
