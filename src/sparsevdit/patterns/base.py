"""BlockPattern: which key blocks each query block keeps, as index data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..layout import TokenLayout


# Block masks are [blocks, blocks]: past this many blocks a side they cost gigabytes (block_size 1 at
# HunyuanVideo's 119,056 tokens would be a 14-billion-entry mask) and no kernel runs such tiny blocks.
MAX_BLOCKS_PER_SIDE = 4096


def num_blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def check_block_grid(layout: TokenLayout, block_size: int) -> None:
    """ValueError when ``layout`` cut into ``block_size``-token blocks makes a block grid too large to hold."""
    nb = num_blocks(layout.num_tokens, block_size)
    if nb > MAX_BLOCKS_PER_SIDE:
        smallest = 1 << max(0, (-(-layout.num_tokens // MAX_BLOCKS_PER_SIDE) - 1).bit_length())
        raise ValueError(
            f"block_size {block_size} cuts {layout.num_tokens:,} tokens into {nb:,} blocks a side "
            f"({nb * nb:,} block pairs; at most {MAX_BLOCKS_PER_SIDE:,} a side are allowed): use block_size >= {smallest} "
            "(our kernels run 64 or 128)"
        )


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

    A pattern is what its index data says: equality, hashing and every cache key (``key``) follow the
    layout, block size, ordering and a digest of ``kv_counts`` / ``kv_indices``, never the recipe
    (``name``, ``params``), so two patterns with one recipe and different masks never share a cached
    result. The index data is checked on construction and must not be modified in place afterwards
    (``key`` refuses a pattern whose tensors changed): build a new pattern instead.
    """

    name: str
    params: dict
    layout: TokenLayout
    block_size: int
    ordering: str
    kv_counts: torch.Tensor  # int32 [q_blocks]
    kv_indices: torch.Tensor  # int32 [q_blocks, max(1, max kv_counts)], -1 padded
    _key: tuple = field(init=False, repr=False, compare=False)
    _versions: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts, indices = _checked_index(self.name, self.layout, self.block_size, self.kv_counts, self.kv_indices)
        object.__setattr__(self, "kv_counts", counts)
        object.__setattr__(self, "kv_indices", indices)
        digest = hashlib.blake2b(counts.numpy().tobytes(), digest_size=16)
        digest.update(str(tuple(indices.shape)).encode())
        digest.update(indices.numpy().tobytes())
        object.__setattr__(self, "_key", (self.layout, self.block_size, self.ordering, digest.hexdigest()))
        object.__setattr__(self, "_versions", (counts._version, indices._version))

    @classmethod
    def from_block_mask(
        cls, name: str, params: dict, layout: TokenLayout, block_size: int, mask: torch.Tensor, ordering: str
    ) -> "BlockPattern":
        check_block_grid(layout, block_size)
        nb = num_blocks(layout.num_tokens, block_size)
        if not isinstance(mask, torch.Tensor) or mask.shape != (nb, nb) or mask.dtype != torch.bool:
            found = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"pattern {name!r} built a block mask of {found}, expected ({nb}, {nb}) bool")
        mask = mask.detach().cpu()
        counts = mask.sum(1)
        width = max(1, int(counts.max()))
        # Stable sort puts kept blocks first, in ascending order.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
        indices = torch.where(torch.arange(width)[None, :] < counts[:, None], order, torch.full_like(order, -1))
        return cls(name, params, layout, block_size, ordering, counts.to(torch.int32), indices.to(torch.int32).contiguous())

    # identity: two patterns with the same index data (over one layout) are the same pattern ---------
    @property
    def key(self) -> tuple:
        """(layout, block_size, ordering, digest of the index data): what every cache is keyed by."""
        if (self.kv_counts._version, self.kv_indices._version) != self._versions:
            raise ValueError(
                f"pattern {self.name!r}: its kv_counts / kv_indices were modified in place after it was built, "
                "so cached masks and its key no longer describe it; build a new BlockPattern instead"
            )
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockPattern) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

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


def _checked_index(name: str, layout: TokenLayout, block_size: int, counts, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The index data as owned int32 CPU tensors, or ValueError naming what is wrong with it: a malformed
    index would make a kernel read out-of-range blocks or count a block twice."""
    if not isinstance(layout, TokenLayout):
        raise ValueError(f"pattern {name!r}: layout must be a TokenLayout, got {type(layout).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"pattern {name!r}: block_size must be a positive integer, got {block_size!r}")
    if not isinstance(counts, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise ValueError(f"pattern {name!r}: kv_counts and kv_indices must be tensors")
    check_block_grid(layout, block_size)
    nb = num_blocks(layout.num_tokens, block_size)
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool or counts.shape != (nb,):
        raise ValueError(f"pattern {name!r}: kv_counts must be an integer tensor of shape ({nb},), "
                         f"got {counts.dtype} {tuple(counts.shape)}")
    if (indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool
            or indices.dim() != 2 or indices.shape[0] != nb or not 1 <= indices.shape[1] <= nb):
        raise ValueError(f"pattern {name!r}: kv_indices must be an integer tensor of shape ({nb}, 1..{nb}), "
                         f"got {indices.dtype} {tuple(indices.shape)}")
    counts = counts.detach().to("cpu", torch.int32).clone().contiguous()
    indices = indices.detach().to("cpu", torch.int32).clone().contiguous()
    if int(counts.min()) < 0 or int(counts.max()) > indices.shape[1]:
        raise ValueError(f"pattern {name!r}: kv_counts must lie in 0..{indices.shape[1]} (the width of kv_indices)")
    listed = torch.arange(indices.shape[1])[None, :] < counts[:, None]
    if bool(((indices < 0) | (indices >= nb))[listed].any()):
        raise ValueError(f"pattern {name!r}: kv_indices lists a key block outside 0..{nb - 1}")
    if bool((indices[~listed] != -1).any()):
        raise ValueError(f"pattern {name!r}: kv_indices must be -1 after each row's kv_counts entries")
    ascending = indices[:, 1:] > indices[:, :-1]
    if bool((~ascending & listed[:, 1:]).any()):
        raise ValueError(f"pattern {name!r}: each row of kv_indices must list its key blocks once, in ascending order")
    return counts, indices


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
