"""Attention maps of a few heads: the block-pooled dense map beside the same map restricted to the
blocks the head's sparse pattern keeps, titled with the recall (share of attention mass kept).

Both maps are drawn in the pattern's token ordering and block grid (q and k are permuted by it), so a
kept block is exactly one cell: nothing token-sized (N x N) is ever built; probabilities are computed in
chunks of query rows by ``attention_study.head_statistics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..layout import TokenLayout
from ..patterns import BlockPattern
from ..patterns.base import block_lengths, check_block_grid
from ._figures import pyplot, save_png
from .attention_study import head_statistics
from .plan_picture import family

DEFAULT_BLOCK_SIZE = 64  # pooling block of heads drawn without any pattern
MAX_DEFAULT_PANELS = 4
LOG_FLOOR = -6  # log10 of the smallest block mass drawn


@dataclass(frozen=True)
class BlockMaps:
    """One head's block-pooled attention in ``ordering``: ``dense[i, j]`` is the mean (over query block
    i's rows) probability mass on key block j; ``kept`` the pattern's blocks (all True for a dense head)."""

    dense: torch.Tensor  # float [QB, KB], each row sums to 1
    kept: torch.Tensor  # bool [QB, KB]
    recall: float
    ordering: str
    block_size: int


def block_maps(q: torch.Tensor, k: torch.Tensor, pattern: BlockPattern | None, layout: TokenLayout,
               block_size: int | None = None, chunk: int = 512) -> BlockMaps:
    """Maps and recall of one head, q and k [N, D] in the layout's frame-major order (as the model holds them)."""
    if q.dim() != 2 or k.dim() != 2:
        raise ValueError(f"one head's q and k are [N, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_tokens(q, k, layout)
    bs = _block_size(pattern, block_size)
    if pattern is not None:
        if pattern.layout != layout:
            raise ValueError(f"pattern {pattern.name!r} is over {pattern.layout}, not the layout given ({layout})")
        ordering = pattern.ordering
        perm = layout.permutation(ordering).to(q.device)
        q, k = q[perm], k[perm]
    else:
        check_block_grid(layout, bs)
        ordering = "frame_major"
    pooled, _, _ = head_statistics(q[None], k[None], layout, bs, {}, chunk=chunk)
    dense = pooled[0].float().cpu()
    kept = pattern.block_mask.clone() if pattern is not None else torch.ones_like(dense, dtype=torch.bool)
    rows = block_lengths(layout.num_tokens, bs).float()
    recall = float((dense * rows[:, None] * kept).sum() / layout.num_tokens)
    return BlockMaps(dense, kept, recall, ordering, bs)


def _block_size(pattern: BlockPattern | None, block_size: int | None) -> int:
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if pattern is None:
        return block_size or DEFAULT_BLOCK_SIZE
    if block_size is not None and block_size != pattern.block_size:
        raise ValueError(f"block_size {block_size} differs from pattern {pattern.name!r}'s {pattern.block_size}: "
                         "the kept blocks are only exact on the pattern's own block grid")
    return pattern.block_size


def _check_tokens(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> None:
    n = layout.num_tokens
    if q.shape[-2] != n or k.shape[-2] != n:
        raise ValueError(f"q and k have {q.shape[-2]} and {k.shape[-2]} tokens; the layout {layout} has {n}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k have head dims {q.shape[-1]} and {k.shape[-1]}")


def _check_qk(q: Any, k: Any, layout: TokenLayout, where: str) -> None:
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise ValueError(f"{where}q and k must be tensors [H, N, D], got {type(q).__name__} and {type(k).__name__}")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"{where}q and k must be [H, N, D] (one sample: q[0] of the capture hook's [B, H, N, D]), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{where}q has {q.shape[0]} heads, k has {k.shape[0]}")
    _check_tokens(q, k, layout)


Panel = tuple[str, torch.Tensor, torch.Tensor, "BlockPattern | None"]


def _panels(q: Any, k: Any, patterns: Any, layout: TokenLayout, heads: Any) -> list[Panel]:
    """(label, q [N, D], k [N, D], pattern) of every head to draw, from one layer's or several layers' tensors."""
    by_layer = isinstance(q, Mapping)
    qs: Mapping = q if by_layer else {None: q}
    if by_layer != isinstance(k, Mapping) or set(qs) != set(k if by_layer else {None: k}):
        raise ValueError("give q and k alike: both [H, N, D] tensors of one layer, or both mappings layer -> tensor")
    ks: Mapping = k if by_layer else {None: k}
    if by_layer and patterns is not None and not isinstance(patterns, Mapping):
        raise ValueError("with q, k by layer, give patterns by layer too: {layer: [pattern or None per head] or None}")
    pats: Mapping = (patterns or {}) if by_layer else {None: patterns}
    for layer in qs:
        _check_qk(qs[layer], ks[layer], layout, "" if layer is None else f"layer {layer}: ")
    layers = sorted(qs) if by_layer else [None]
    if heads is None:  # one head from each of the first few layers, a different head each time
        heads = [(layer, i % qs[layer].shape[0]) for i, layer in enumerate(layers[:MAX_DEFAULT_PANELS])] if by_layer \
            else list(range(min(MAX_DEFAULT_PANELS, q.shape[0])))
    panels = []
    for item in heads:
        if by_layer:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"with q, k by layer, heads are (layer, head) pairs, got {item!r}")
            layer, head = item
            if layer not in qs:
                raise ValueError(f"heads: layer {layer!r} is not among the layers given ({', '.join(map(str, layers))})")
        else:
            layer, head = None, item
        n_heads = qs[layer].shape[0]
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
            raise ValueError(f"heads: head {head!r} out of range 0..{n_heads - 1}")
        per_head = pats.get(layer)
        if per_head is not None and len(per_head) != n_heads:
            raise ValueError(f"patterns{'' if layer is None else f'[{layer}]'}: {len(per_head)} given for {n_heads} heads")
        pattern = None if per_head is None else per_head[head]
        if pattern is not None and not isinstance(pattern, BlockPattern):
            raise ValueError(f"patterns: a BlockPattern or None per head, got {type(pattern).__name__}")
        label = f"H{head}" if layer is None else f"L{layer} H{head}"
        panels.append((label, qs[layer][head], ks[layer][head], pattern))
    if not panels:
        raise ValueError("heads: no head to draw")
    return panels


def save_attention_maps_png(
    q: torch.Tensor | Mapping[int, torch.Tensor],
    k: torch.Tensor | Mapping[int, torch.Tensor],
    patterns: Sequence[BlockPattern | None] | Mapping[int, Sequence[BlockPattern | None] | None] | None,
    layout: TokenLayout,
    path: str | Path,
    heads: Sequence[int] | Sequence[tuple[int, int]] | None = None,
    block_size: int | None = None,
    title: str | None = None,
    chunk: int = 512,
) -> Path:
    """For each head in ``heads``, side by side: its block-pooled dense attention map (log10) and the same
    map on the blocks its pattern keeps only (the rest grey), titled with the recall.

    One layer: ``q``, ``k`` [H, N, D] (post-RoPE, one sample), ``patterns`` one BlockPattern or None
    (dense) per head, or None for all dense; ``heads`` head indices (default: the first 4).
    Several layers: mappings layer -> [H, N, D] and layer -> per-head patterns (None: a dense layer);
    ``heads`` (layer, head) pairs (default: one head of each of the first 4 layers).
    ``block_size``: the pooling block (default: the patterns' own, 64 where there is none); a pattern
    whose block size differs is refused (its kept blocks are only exact on its own grid)."""
    if not isinstance(layout, TokenLayout):
        raise ValueError(f"layout must be a TokenLayout, got {type(layout).__name__}")
    panels = _panels(q, k, patterns, layout, heads)
    # by default dense heads pool on the grid of the patterned ones, where there are any
    dense_bs = block_size or next((p.block_size for *_, p in panels if p is not None), None)
    maps = [block_maps(qh, kh, p, layout, block_size if p is not None else dense_bs, chunk) for _, qh, kh, p in panels]
    return save_png(_figure(panels, maps, layout, title), path)


def _figure(panels: list[Panel], maps: list[BlockMaps], layout: TokenLayout, title: str | None) -> Any:
    import matplotlib

    plt = pyplot()
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#d0d0d0")  # unkept blocks are NaN: grey
    fig, axes = plt.subplots(len(panels), 2, figsize=(7.6, 3.5 * len(panels)), dpi=100, squeeze=False,
                             layout="constrained")
    image = None
    for (label, _, _, pattern), m, (ax_dense, ax_kept) in zip(panels, maps, axes):
        logged = m.dense.clamp(min=10.0**LOG_FLOOR).log10()
        kept = torch.where(m.kept, logged, torch.tensor(float("nan")))
        for ax, values in ((ax_dense, logged), (ax_kept, kept)):
            image = ax.imshow(values.numpy(), cmap=cmap, vmin=LOG_FLOOR, vmax=0, interpolation="nearest")
            _text_lines(ax, layout, m.block_size)
            ax.set_xlabel(f"key block ({m.block_size} tokens, {m.ordering})", fontsize=7)
            ax.set_ylabel("query block", fontsize=7)
            ax.tick_params(labelsize=6)
        density = 1.0 if pattern is None else pattern.density
        ax_dense.set_title(f"{label}: dense attention", fontsize=8)
        ax_kept.set_title(f"{label}: {family(pattern)}, density {density:.0%}\nkeeps {m.recall:.1%} of the attention mass",
                          fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="log10 attention mass per block (mean over query rows)")
    fig.suptitle(title or "attention: dense vs the blocks the sparse pattern keeps", fontsize=9)
    return fig


def _text_lines(ax: Any, layout: TokenLayout, block_size: int) -> None:
    """Thin lines where the text tokens start and end (they keep their place in every ordering)."""
    start, end = layout.text_range
    if end <= start:
        return
    for pos in {start, end} - {0, layout.num_tokens}:
        ax.axhline(pos / block_size - 0.5, color="cyan", linewidth=0.6)
        ax.axvline(pos / block_size - 0.5, color="cyan", linewidth=0.6)
