"""Running a dynamic method: its selection at most once per (layer, step), reused for ``reuse_every`` steps.

A dynamic method's ``select`` reads the layer's own q and k, so it runs inside the attention call. The
first call of a layer at a selection step selects; later calls at that step (a second classifier-free
guidance pass, a second sample) and the steps up to the next selection step reuse it. Selection steps
are ``dense_steps, dense_steps + reuse_every, ...``; a step that goes back (a new generation) or a new
layout selects again. An index-form selection (``topk``'s) stays on the device as a
``patterns.BlockSelection``, which our Triton kernel runs as it comes and any other backend runs as
BlockPatterns (one host copy per selection, ``BlockSelection.to_patterns``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..layout import TokenLayout
from ..patterns.base import BlockPattern
from ..patterns.selection import BlockSelection
from .base import MethodParams, check_int, get_method, parse_params


Selected = BlockSelection | list[BlockPattern]  # what one selection gives a layer


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
        self._last: dict[int, tuple[int, TokenLayout, Selected]] = {}
        self.selections = 0  # select calls so far (for tests and reports)
        self.history: list[Selected | None] = []  # what every attention call ran (None: dense)
        # a context-manager factory entered around every select call (bench e2e's selection timer)
        self.select_timer: Callable[[], contextlib.AbstractContextManager] | None = None

    def runs_dense(self, layer: int, step: int) -> bool:
        p = self.params
        return step < p.dense_steps or layer in p.dense_layers

    def patterns_for(self, layer: int, step: int, q, k, layout: TokenLayout, v=None) -> Selected | None:
        """The layer's patterns at ``step`` from its post-RoPE q, k (and v) [B, H, N, D] (None: dense here):
        a BlockSelection on q's device, or one BlockPattern per head; ``sparse_attention`` takes either."""
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
        timer = self.select_timer() if self.select_timer is not None else contextlib.nullcontext()
        with timer:
            chosen = self.cls.select(q, k, layout, self.block_size, p, v=v, layer=layer, step=step)
        self.selections += 1
        if isinstance(chosen, BlockSelection):  # already one (an index in another token order)
            pats = chosen
        elif isinstance(chosen, tuple):  # (counts, indices): the kernels' index form, kept on the device
            pats = BlockSelection(layout, self.block_size, *chosen, name=self.cls.name, params=p.to_dict())
        else:  # one BlockPattern per head (a choice among prebuilt masks, e.g. svg's)
            pats = list(chosen)
        self._last[layer] = (step, layout, pats)
        return pats

    def describe(self) -> dict[str, Any]:
        return {"method": self.cls.name, "params": self.params.to_dict(), "block_size": self.block_size}


def patterns_from_index(counts: torch.Tensor, indices: torch.Tensor, layout: TokenLayout, block_size: int,
                        params: dict | None = None, name: str = "topk") -> list[BlockPattern]:
    """One BlockPattern per head of an index-form selection (host copies: for backends other than ours)."""
    return BlockSelection(layout, block_size, counts, indices, name=name, params=dict(params or {})).to_patterns()


def as_patterns(selected: Selected | None) -> list[BlockPattern] | None:
    """One BlockPattern per head of whatever a dynamic method ran (None stays None: dense)."""
    return selected.to_patterns() if isinstance(selected, BlockSelection) else selected
