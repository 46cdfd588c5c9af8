"""Random block masks: a test and benchmark pattern with an exact block density."""

from __future__ import annotations

import torch

from ..layout import TokenLayout
from .base import BlockGeometry, num_blocks
from .registry import PatternError, register


@register("random_blocks")
def random_blocks(
    layout: TokenLayout, *, block_size: int, density: float = 0.25, seed: int = 0, text_rows: bool = False, text_cols: bool = False
):
    """Each query block keeps round(density * kv_blocks) key blocks drawn at random (at least one).

    Parameters:
    density: fraction of key blocks kept in every query block row (0 < density <= 1)
    seed: random seed; the same seed gives the same mask
    text_rows: text queries attend every key
    text_cols: every query attends the text keys
    """
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not 0 < density <= 1:
        raise PatternError(f"random_blocks: density must be in (0, 1], got {density!r}")
    # torch seeds are 64-bit; refusing others keeps int() from turning 0.5 or "3" into another seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise PatternError(f"random_blocks: seed must be an integer in 0..2**63-1, got {seed!r}")
    nb = num_blocks(layout.num_tokens, block_size)
    keep = max(1, round(density * nb))
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.rand(nb, nb, generator=gen).argsort(dim=1).argsort(dim=1)
    geo = BlockGeometry(layout, block_size, "frame_major")
    return geo.with_text(ranks < keep, text_rows, text_cols)
