"""Running a dynamic method: its selection at most once per (layer, step), reused for ``reuse_every`` steps.

A dynamic method's ``select`` reads the layer's own q and k, so it runs inside the attention call. The
first call of a layer at a selection step selects; later calls at that step (a second classifier-free
guidance pass, a second sample) and the steps up to the next selection step reuse it. Selection steps
are ``dense_steps, dense_steps + reuse_every, ...``; a step that goes back (a new generation) or a new
layout selects again. The index is turned into BlockPatterns here (one host copy per selection), which
every backend runs; handing the device index to the kernels directly is still to be done (issue 17).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..layout import TokenLayout
from ..patterns.base import BlockPattern
from .base import MethodParams, check_int, get_method, parse_params


@dataclass(frozen=True, kw_only=True)
class DynamicParams(MethodParams):
    """Options of every dynamic method.

    reuse_every: select at every k-th step after the dense ones and reuse the selection in between.
    """

    reuse_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.method, "reuse_every", self.reuse_every, 1)


class DynamicPatterns:
    """One model's selections of a dynamic method, per layer."""

    def __init__(self, method: str, params: dict | MethodParams | None, block_size: int):
        self.cls = get_method(method)
        self.params = parse_params(self.cls, params)
        self.block_size = block_size
        self._last: dict[int, tuple[int, TokenLayout, list[BlockPattern]]] = {}
        self.selections = 0  # select calls so far (for tests and reports)
        self.history: list[list[BlockPattern] | None] = []  # what every attention call ran (None: dense)

    def runs_dense(self, layer: int, step: int) -> bool:
        p = self.params
        return step < p.dense_steps or layer in p.dense_layers

    def patterns_for(self, layer: int, step: int, q, k, layout: TokenLayout, v=None) -> list[BlockPattern] | None:
        """The layer's patterns at ``step`` from its post-RoPE q, k (and v) [B, H, N, D] (None: dense here)."""
        pats = self._patterns_for(layer, step, q, k, layout, v)
        self.history.append(pats)
        return pats

    def _patterns_for(self, layer, step, q, k, layout, v):
        if self.runs_dense(layer, step):
            return None
        p = self.params
        last = self._last.get(layer)
        every = getattr(p, "reuse_every", 1)
        if last is not None and last[1] == layout and last[0] <= step:
            if last[0] == step or (step - p.dense_steps) % every != 0 and step - last[0] < every:
                return last[2]
        chosen = self.cls.select(q, k, layout, self.block_size, p, v=v, layer=layer, step=step)
        self.selections += 1
        if isinstance(chosen, tuple):  # (counts, indices): the kernels' index form
            pats = patterns_from_index(*chosen, layout, self.block_size, p.to_dict(), self.cls.name)
        else:  # one BlockPattern per head (a choice among prebuilt masks, e.g. svg's)
            pats = list(chosen)
        self._last[layer] = (step, layout, pats)
        return pats

    def describe(self) -> dict[str, Any]:
        return {"method": self.cls.name, "params": self.params.to_dict(), "block_size": self.block_size}


def patterns_from_index(counts: torch.Tensor, indices: torch.Tensor, layout: TokenLayout, block_size: int,
                        params: dict | None = None, name: str = "topk") -> list[BlockPattern]:
    """One BlockPattern per head of a selection (host copies: for backends other than the kernels)."""
    out = []
    nk = indices.shape[-1]
    for c, idx in zip(counts.cpu(), indices.cpu().long()):
        mask = torch.zeros(c.shape[0], nk + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(idx >= 0, idx, nk), True)
        out.append(BlockPattern.from_block_mask(name, dict(params or {}), layout, block_size, mask[:, :nk],
                                                "frame_major"))
    return out
