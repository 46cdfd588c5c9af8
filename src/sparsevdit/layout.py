"""Token layout of a video DiT's self-attention: optional text tokens plus a T x H x W grid.

Video tokens are stored frame-major (frame, row, column), the order every model we target uses.
Orderings are permutations of the whole sequence: ``perm[new_position] = old_position``, so
``x[..., perm, :]`` reorders and ``y[..., inverse, :]`` restores. Text tokens never move.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

TEXT_POSITIONS = ("none", "prefix", "suffix")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"TokenLayout.{name} must be a positive integer, got {value!r}")
    return value


MAX_TOKENS = 2**31 - 1  # token positions are int32 in the kernels' index arithmetic


@dataclass(frozen=True)
class TokenLayout:
    """Text tokens (none, before or after the video) plus ``frames x height x width`` video tokens.

    Sizes are in tokens after patchify (latent frames, latent rows / patch, ...).
    """

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_position: str = "none"

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.text_tokens, bool) or not isinstance(self.text_tokens, int) or self.text_tokens < 0:
            raise ValueError(f"TokenLayout.text_tokens must be an integer >= 0, got {self.text_tokens!r}")
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(
                f"TokenLayout.text_position must be one of {', '.join(TEXT_POSITIONS)}, got {self.text_position!r}"
            )
        if self.text_position == "none" and self.text_tokens:
            raise ValueError(
                "TokenLayout.text_tokens is "
                f"{self.text_tokens} but text_position is 'none': use 'prefix' or 'suffix', or text_tokens=0"
            )
        if self.num_tokens > MAX_TOKENS:
            raise ValueError(
                f"TokenLayout of {self.frames} x {self.height} x {self.width} video + {self.text_tokens} text tokens "
                f"has {self.num_tokens:,} tokens, more than the {MAX_TOKENS:,} kernels can index (int32)"
            )

    # sizes -----------------------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_text(self) -> int:
        return self.text_tokens if self.text_position != "none" else 0

    @property
    def num_tokens(self) -> int:
        return self.video_tokens + self.num_text

    @property
    def video_start(self) -> int:
        """Index of the first video token in the sequence."""
        return self.num_text if self.text_position == "prefix" else 0

    @property
    def text_range(self) -> tuple[int, int]:
        """[start, end) of the text tokens (empty when there are none)."""
        if self.text_position == "prefix":
            return (0, self.num_text)
        if self.text_position == "suffix":
            return (self.video_tokens, self.num_tokens)
        return (0, 0)

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "text_tokens": self.text_tokens,
            "text_position": self.text_position,
        }

    def __str__(self) -> str:
        text = f" + {self.num_text} text ({self.text_position})" if self.num_text else ""
        return f"{self.frames}x{self.height}x{self.width} video{text} = {self.num_tokens} tokens"

    # orderings ------------------------------------------------------------------------------
    def permutation(self, ordering: str) -> torch.Tensor:
        """``perm`` (int64 [num_tokens]) with ``reordered = x[..., perm, :]`` (a fresh copy: the cached
        one is shared by every pattern of this layout)."""
        return _permutation(self, ordering).clone()

    def inverse_permutation(self, ordering: str) -> torch.Tensor:
        return _inverse(self, ordering).clone()


_ORDERINGS: dict[str, Callable[[TokenLayout], torch.Tensor]] = {}


def register_ordering(name: str, *, override: bool = False):
    """Register ``fn(layout) -> video permutation`` (int64 [video_tokens], new -> old video index).
    A name already registered is refused unless ``override=True``."""
    if name in _ORDERINGS and not override:
        raise ValueError(f"token ordering {name!r} is already registered; pass override=True to replace it")
    if name.startswith("tile_major_"):
        raise ValueError(f"token ordering names starting with 'tile_major_' are the built-in tile family; choose another name than {name!r}")

    def wrap(fn):
        _ORDERINGS[name] = fn
        if "_inverse" in globals():  # a replaced ordering must not keep its cached permutations
            _permutation.cache_clear()
            _inverse.cache_clear()
        return fn

    return wrap


def available_orderings() -> list[str]:
    """Registered names, plus the family ``tile_major_TxHxW`` (any tile size) written with its default."""
    return sorted(_ORDERINGS) + [TILE_MAJOR_DEFAULT]


def is_ordering(name: object) -> bool:
    """``name`` names an ordering: registered, or ``tile_major_TxHxW`` with positive sizes."""
    return isinstance(name, str) and (name in _ORDERINGS or tile_size(name) is not None)


# Sliding Tile Attention's ordering: tiles of (t, h, w) tokens, tile after tile (frame-major over the
# tile grid), frame-major inside a tile; tiles at the grid's far edges are clipped, never padded, so
# the permutation covers exactly the video tokens. The tile size is part of the name so plans can say it.
TILE_MAJOR_PREFIX = "tile_major_"
TILE_MAJOR_DEFAULT = "tile_major_6x8x8"  # FastVideo's STA tile


def tile_size(name: str) -> tuple[int, int, int] | None:
    """(t, h, w) of a ``tile_major_TxHxW`` name, or None for any other name."""
    if not name.startswith(TILE_MAJOR_PREFIX):
        return None
    parts = name[len(TILE_MAJOR_PREFIX):].split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 and str(int(p)) == p for p in parts):
        return None
    t, h, w = (int(p) for p in parts)
    return t, h, w


def tile_major_name(t: int, h: int, w: int) -> str:
    for v in (t, h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"tile sizes must be positive integers, got ({t}, {h}, {w})")
    return f"{TILE_MAJOR_PREFIX}{t}x{h}x{w}"


def _tile_major(layout: TokenLayout, tile: tuple[int, int, int]) -> torch.Tensor:
    f, h, w = layout.frames, layout.height, layout.width
    index = torch.arange(f * h * w).view(f, h, w)
    pieces = []
    for f0 in range(0, f, tile[0]):
        for y0 in range(0, h, tile[1]):
            for x0 in range(0, w, tile[2]):
                pieces.append(index[f0:f0 + tile[0], y0:y0 + tile[1], x0:x0 + tile[2]].reshape(-1))
    return torch.cat(pieces)


@register_ordering("frame_major")
def _frame_major(layout: TokenLayout) -> torch.Tensor:
    return torch.arange(layout.video_tokens)


@register_ordering("position_major")
def _position_major(layout: TokenLayout) -> torch.Tensor:
    # Token of frame f at in-frame position p moves to p * frames + f: the same place in every frame
    # becomes contiguous, so "same place in nearby frames" is a band around the diagonal.
    f, p = layout.frames, layout.tokens_per_frame
    return torch.arange(f * p).view(f, p).t().reshape(-1)


@lru_cache(maxsize=256)
def _permutation(layout: TokenLayout, ordering: str) -> torch.Tensor:
    tile = tile_size(ordering) if isinstance(ordering, str) and ordering not in _ORDERINGS else None
    if ordering not in _ORDERINGS and tile is None:
        raise ValueError(f"unknown token ordering {ordering!r}; available: {', '.join(available_orderings())} "
                         "(tile_major_TxHxW for any tile of T x H x W tokens)")
    video = (_tile_major(layout, tile) if tile is not None else _ORDERINGS[ordering](layout)) + layout.video_start
    head = torch.arange(layout.video_start)
    tail = torch.arange(layout.video_start + layout.video_tokens, layout.num_tokens)
    return torch.cat([head, video, tail])


@lru_cache(maxsize=256)
def _inverse(layout: TokenLayout, ordering: str) -> torch.Tensor:
    perm = _permutation(layout, ordering)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv
