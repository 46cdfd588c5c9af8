"""BlockPattern: which key blocks each query block keeps, as index data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..layout import TokenLayout


def num_blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def block_lengths(num_tokens: int, block_size: int) -> torch.Tensor:
    """Real tokens in each block (the last one may be partial), int64 [blocks]."""
    n = num_blocks(num_tokens, block_size)
    lengths = torch.full((n,), block_size, dtype=torch.int64)
    lengths[-1] = num_tokens - (n - 1) * block_size
    return lengths


@dataclass(frozen=True, eq=False)
class BlockPattern:
    """Kept (query block, key block) pairs of one attention head, over ``layout`` reordered by ``ordering``.

    Stored as index data: ``kv_counts[i]`` key blocks are kept for query block ``i``, listed in
    ascending order in ``kv_indices[i, :kv_counts[i]]`` (the rest is -1). Blocks are ``block_size``
    consecutive tokens of the *reordered* sequence; the last block may be partial.
    """

    name: str
    params: dict
    layout: TokenLayout
    block_size: int
    ordering: str
    kv_counts: torch.Tensor  # int32 [q_blocks]
    kv_indices: torch.Tensor  # int32 [q_blocks, max(1, max kv_counts)], -1 padded
    _key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_key", (self.name, json.dumps(self.params, sort_keys=True), self.layout, self.block_size, self.ordering)
        )

    @classmethod
    def from_block_mask(
        cls, name: str, params: dict, layout: TokenLayout, block_size: int, mask: torch.Tensor, ordering: str
    ) -> "BlockPattern":
        nb = num_blocks(layout.num_tokens, block_size)
        if mask.shape != (nb, nb) or mask.dtype != torch.bool:
            raise ValueError(f"pattern {name!r} built a block mask of {tuple(mask.shape)} {mask.dtype}, expected ({nb}, {nb}) bool")
        counts = mask.sum(1)
        width = max(1, int(counts.max()))
        # Stable sort puts kept blocks first, in ascending order.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
        indices = torch.where(torch.arange(width)[None, :] < counts[:, None], order, torch.full_like(order, -1))
        return cls(name, params, layout, block_size, ordering, counts.to(torch.int32), indices.to(torch.int32).contiguous())

    # identity: two patterns built from the same recipe are the same pattern ---------------------
    @property
    def key(self) -> tuple:
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockPattern) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    # derived views ------------------------------------------------------------------------------
    @property
    def num_q_blocks(self) -> int:
        return self.kv_counts.numel()

    @property
    def num_kv_blocks(self) -> int:
        return self.num_q_blocks

    @cached_property
    def block_mask(self) -> torch.Tensor:
        """bool [q_blocks, kv_blocks]."""
        mask = torch.zeros(self.num_q_blocks, self.num_kv_blocks + 1, dtype=torch.bool)
        cols = torch.where(self.kv_indices >= 0, self.kv_indices.long(), self.num_kv_blocks)
        mask.scatter_(1, cols, True)
        return mask[:, :-1]

    @cached_property
    def density(self) -> float:
        """Fraction of all query-key pairs computed, counting only real tokens of partial blocks."""
        lengths = block_lengths(self.layout.num_tokens, self.block_size).double()
        kept = (lengths[:, None] * lengths[None, :] * self.block_mask).sum()
        return float(kept / float(self.layout.num_tokens) ** 2)

    @property
    def is_empty(self) -> bool:
        """No key kept anywhere: the head's output is zero (the ``skip`` pattern)."""
        return int(self.kv_counts.max()) == 0

    @property
    def is_dense(self) -> bool:
        return bool(int(self.kv_counts.min()) == self.num_kv_blocks)

    def token_mask(self) -> torch.Tensor:
        """bool [N, N] in this pattern's ordering. For tests and small sizes only: it is N x N."""
        n, b = self.layout.num_tokens, self.block_size
        return self.block_mask.repeat_interleave(b, 0).repeat_interleave(b, 1)[:n, :n]

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{self.name}({params}) over {self.layout}, {self.ordering}, "
            f"{self.num_q_blocks}x{self.num_kv_blocks} blocks of {self.block_size}, density {self.density:.1%}"
        )

    def __repr__(self) -> str:
        return f"BlockPattern<{self.describe()}>"


@dataclass(frozen=True)
class BlockGeometry:
    """Per-block facts of a layout in one ordering, which pattern builders combine into masks.

    Video positions are indices into the reordered video tokens (0 .. video_tokens-1).
    """

    layout: TokenLayout
    block_size: int
    ordering: str

    @cached_property
    def _starts(self) -> torch.Tensor:
        return torch.arange(num_blocks(self.layout.num_tokens, self.block_size)) * self.block_size

    @cached_property
    def _ends(self) -> torch.Tensor:  # exclusive
        return torch.clamp(self._starts + self.block_size, max=self.layout.num_tokens)

    @cached_property
    def video_first(self) -> torch.Tensor:
        """First video position in each block (undefined where has_video is False)."""
        vs = self.layout.video_start
        return torch.clamp(self._starts, min=vs) - vs

    @cached_property
    def video_last(self) -> torch.Tensor:
        vs, ve = self.layout.video_start, self.layout.video_start + self.layout.video_tokens
        return torch.clamp(self._ends, max=ve) - 1 - vs

    @cached_property
    def has_video(self) -> torch.Tensor:
        return self.video_last >= self.video_first

    @cached_property
    def has_text(self) -> torch.Tensor:
        t0, t1 = self.layout.text_range
        return (self._starts < t1) & (self._ends > t0)

    def band(self, radius: int) -> torch.Tensor:
        """Blocks holding some video pair (q, k) with |q - k| <= radius in video positions."""
        a0, a1 = self.video_first[:, None], self.video_last[:, None]
        b0, b1 = self.video_first[None, :], self.video_last[None, :]
        gap = torch.clamp(torch.maximum(b0 - a1, a0 - b1), min=0)
        return (gap <= radius) & self.has_video[:, None] & self.has_video[None, :]

    def with_text(self, mask: torch.Tensor, text_rows: bool, text_cols: bool) -> torch.Tensor:
        if text_rows:
            mask = mask | self.has_text[:, None]
        if text_cols:
            mask = mask | self.has_text[None, :]
        return mask

    def video_frames_of_tokens(self) -> torch.Tensor:
        """Frame of each token of the reordered sequence (-1 for text), int64 [num_tokens]."""
        lay = self.layout
        orig = lay.permutation(self.ordering) - lay.video_start
        is_video = (orig >= 0) & (orig < lay.video_tokens)
        return torch.where(is_video, orig // lay.tokens_per_frame, torch.full_like(orig, -1))

    def any_token_per_block(self, token_flags: torch.Tensor) -> torch.Tensor:
        nb, b = num_blocks(self.layout.num_tokens, self.block_size), self.block_size
        padded = torch.zeros(nb * b, dtype=torch.bool)
        padded[: token_flags.numel()] = token_flags
        return padded.view(nb, b).any(1)
