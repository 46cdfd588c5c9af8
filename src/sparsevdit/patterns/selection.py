"""``BlockSelection``: per head, the key blocks each query block keeps, as tensors on the model's device.

What a dynamic method (``topk``) selects inside the attention call. Our Triton kernel runs it as it comes
(``sparse_attention`` hands it over: no host copy, no regrouping, so a CUDA graph of a denoising step
stays possible); every other backend runs ``to_patterns()``, ordinary BlockPatterns built by one host
copy. Blocks count tokens in ``ordering``: the device path runs frame-major selections (the model's
own order); another order (``topk``'s ``region``) runs as BlockPatterns, which ``sparse_attention``
permutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import TokenLayout
from .base import BlockPattern, block_lengths, num_blocks


@dataclass(frozen=True, eq=False)
class BlockSelection:
    """counts int32 [H, q_blocks]; indices int32 [H, q_blocks, W], each row's kept key blocks ascending,
    padded with -1 (W >= the longest list; ``topk`` gives W = key blocks)."""

    layout: TokenLayout
    block_size: int
    counts: torch.Tensor
    indices: torch.Tensor
    name: str = "selection"
    params: dict = field(default_factory=dict)
    ordering: str = "frame_major"  # the token order the blocks are counted in (our kernel's device path: frame-major)
    _patterns: list = field(default_factory=list, repr=False)  # to_patterns' cache

    def __post_init__(self) -> None:
        nb = num_blocks(self.layout.num_tokens, self.block_size)
        c, i = self.counts, self.indices
        if not isinstance(c, torch.Tensor) or not isinstance(i, torch.Tensor):
            raise ValueError("a BlockSelection's counts and indices must be tensors")
        if c.dim() != 2 or c.shape[1] != nb or i.dim() != 3 or i.shape[:2] != c.shape or not 1 <= i.shape[2] <= nb:
            raise ValueError(
                f"a BlockSelection over {nb} blocks needs counts [H, {nb}] and indices [H, {nb}, W <= {nb}]; "
                f"got {tuple(c.shape)} and {tuple(i.shape)}")
        if c.dtype != torch.int32 or i.dtype != torch.int32 or c.device != i.device:
            raise ValueError("a BlockSelection's counts and indices must be int32 tensors on one device")

    @classmethod
    def from_block_mask(cls, layout: TokenLayout, block_size: int, mask: torch.Tensor, name: str = "selection",
                        params: dict | None = None) -> "BlockSelection":
        """The selection of a block mask bool [H, q_blocks, key_blocks], built where the mask lives (no host
        read): ascending lists, -1 padded, W = key blocks."""
        nk = mask.shape[-1]
        ids = torch.arange(nk, device=mask.device, dtype=torch.int32)
        ascending = torch.sort(torch.where(mask, ids, nk), dim=-1).values  # kept ids first, ascending
        return cls(layout, block_size, mask.sum(-1).to(torch.int32), torch.where(ascending < nk, ascending, -1).to(torch.int32),
                   name=name, params=dict(params or {}))

    def block_mask(self) -> torch.Tensor:
        """bool [H, q_blocks, key_blocks] on the selection's device (no host read)."""
        h, nq, w = self.indices.shape
        nk = num_blocks(self.layout.num_tokens, self.block_size)
        listed = torch.arange(w, device=self.device)[None, None, :] < self.counts[..., None]
        slot = torch.where(listed & (self.indices >= 0), self.indices.long(), nk)
        mask = torch.zeros(h, nq, nk + 1, dtype=torch.bool, device=self.device)
        return mask.scatter_(2, slot, True)[..., :nk]

    @property
    def heads(self) -> int:
        return self.counts.shape[0]

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def to_patterns(self) -> list[BlockPattern]:
        """One BlockPattern per head (host copies; built once)."""
        if not self._patterns:
            for mask in self.block_mask().cpu():
                self._patterns.append(BlockPattern.from_block_mask(
                    self.name, dict(self.params), self.layout, self.block_size, mask, self.ordering))
        return list(self._patterns)

    @property
    def density(self) -> float:
        """Mean over heads of the fraction of query-key pairs kept, counting only real tokens of partial
        blocks (as ``BlockPattern.density``); computed where the selection lives, one scalar read back."""
        n = self.layout.num_tokens
        lengths = block_lengths(n, self.block_size).to(self.device, torch.float64)
        mask = self.block_mask().double()
        kept = torch.einsum("hqk,q,k->", mask, lengths, lengths)
        return float(kept) / (float(n) ** 2 * self.heads)
