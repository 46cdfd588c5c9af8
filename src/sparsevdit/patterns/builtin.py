"""The Sparse-vDiT pattern family: dense, skip, diagonal, multi_diagonal, vertical_stripe, union.

Each builder states its exact token-level rule; the block mask keeps a block pair when any of its
real (query, key) token pairs satisfies the rule. Text rows and columns are dense unless
``text_rows`` / ``text_cols`` say otherwise.
"""

from __future__ import annotations

from ..layout import TokenLayout, available_orderings, is_ordering
from .base import BlockGeometry, num_blocks
from .registry import PatternError, build, empty_mask, register


# Widths beyond any sequence our int32 block indices address; past the sequence a band keeps everything.
MAX_WIDTH = 2**31


def _radius(name: str, layout: TokenLayout, width: int | None) -> int:
    if width is None:
        width = layout.tokens_per_frame
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise PatternError(f"{name}: width must be a positive integer number of tokens (at most 2**31), got {width!r}")
    return width // 2


@register("dense")
def dense(layout: TokenLayout, *, block_size: int):
    """Every query attends every key (full attention)."""
    return ~empty_mask(layout, block_size)


@register("skip")
def skip(layout: TokenLayout, *, block_size: int):
    """No keys at all: the head's output is zero (Sparse-vDiT's skipped head)."""
    return empty_mask(layout, block_size)


@register("diagonal")
def diagonal(layout: TokenLayout, *, block_size: int, width: int | None = None, text_rows: bool = True, text_cols: bool = True):
    """Spatial window: video query q keeps video keys k with |q - k| <= width // 2 in frame-major order.

    Parameters:
    width: band width in tokens, rounded out to whole blocks (default: tokens_per_frame)
    text_rows: text queries attend every key
    text_cols: every query attends the text keys
    """
    geo = BlockGeometry(layout, block_size, "frame_major")
    return geo.with_text(geo.band(_radius("diagonal", layout, width)), text_rows, text_cols)


@register("multi_diagonal")
def multi_diagonal(
    layout: TokenLayout, *, block_size: int, width: int | None = None, text_rows: bool = True, text_cols: bool = True
):
    """Same place in other frames: a band of width tokens in position-major order.

    Token of frame f at in-frame position p sits at p * frames + f in position-major order, so the band
    |q - k| <= width // 2 there keeps, for each query, about width / frames in-frame positions around
    its own in every frame: the diagonals repeated every tokens_per_frame of the frame-major map.

    Parameters:
    width: band width in tokens of the position-major order, rounded out to whole blocks
        (default: tokens_per_frame, i.e. tokens_per_frame / frames positions in all frames)
    text_rows: text queries attend every key
    text_cols: every query attends the text keys
    """
    geo = BlockGeometry(layout, block_size, "position_major")
    mask = geo.with_text(geo.band(_radius("multi_diagonal", layout, width)), text_rows, text_cols)
    return mask, "position_major"


@register("vertical_stripe")
def vertical_stripe(
    layout: TokenLayout,
    *,
    block_size: int,
    sink_frames: int = 0,
    blocks: list | None = None,
    text_rows: bool = True,
    text_cols: bool = True,
    ordering: str = "frame_major",
):
    """Global keys every query attends: text tokens, the first sink_frames frames, and listed key blocks.

    Parameters:
    sink_frames: keep the key blocks holding any token of the first sink_frames frames
    blocks: explicit key block indices to keep for every query (e.g. chosen from measured maps)
    text_rows: text queries attend every key
    text_cols: every query attends the text keys (text key blocks are stripes)
    ordering: token ordering the blocks are counted in (frame_major or position_major), so the
        stripes can be united with a pattern of that ordering
    """
    if not is_ordering(ordering):
        raise PatternError(f"vertical_stripe: ordering must be one of {', '.join(available_orderings())}, got {ordering!r}")
    if isinstance(sink_frames, bool) or not isinstance(sink_frames, int) or not 0 <= sink_frames <= layout.frames:
        raise PatternError(f"vertical_stripe: sink_frames must be an integer in 0..{layout.frames}, got {sink_frames!r}")
    nb = num_blocks(layout.num_tokens, block_size)
    if blocks is not None and not isinstance(blocks, (list, tuple)):
        raise PatternError(f"vertical_stripe: blocks must be a list of key block indices in 0..{nb - 1}, got {blocks!r}")
    blocks = list(blocks or [])
    bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < nb]
    if bad:
        raise PatternError(f"vertical_stripe: blocks must be key block indices in 0..{nb - 1}, got {bad}")
    geo = BlockGeometry(layout, block_size, ordering)
    cols = geo.any_token_per_block((geo.video_frames_of_tokens() >= 0) & (geo.video_frames_of_tokens() < sink_frames))
    cols[blocks] = True
    if text_cols:
        cols |= geo.has_text
    if not bool(cols.any()):
        raise PatternError(
            "vertical_stripe keeps no key: give sink_frames >= 1, a list of blocks, or a layout with text tokens"
        )
    mask = cols[None, :].expand(nb, nb).clone()
    return geo.with_text(mask, text_rows, False), ordering


@register("union")
def union(layout: TokenLayout, *, block_size: int, patterns: list | None = None):
    """Keys kept by any of several patterns (e.g. diagonal + vertical_stripe), in one token ordering.

    Parameters:
    patterns: list of {"name": ..., "params": {...}} (or bare names); all must share one token
        ordering, except dense and skip, which fit any
    """
    if not patterns or not isinstance(patterns, (list, tuple)):
        raise PatternError(
            'union needs patterns=[{"name": ..., "params": {...}}, ...] with at least one entry, '
            f"got {patterns!r}"
        )
    parts = []
    for item in patterns:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise PatternError(f"union: each entry must be a name or {{'name': ..., 'params': {{...}}}}, got {item!r}")
        unknown = [k for k in item if k not in ("name", "params")]
        if unknown:  # a typo ("param") would otherwise build the part with its defaults
            raise PatternError(f"union: entry {item['name']!r} has no field {unknown[0]!r}; its fields: name, params")
        if item["name"] == "union":
            raise PatternError("union: nest no union inside a union; list its parts instead")
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise PatternError(f"union: params of {item['name']!r} must be an object of parameters, got {params!r}")
        parts.append(build(item["name"], layout, block_size=block_size, **params))
    orderings = {p.ordering for p in parts if p.name not in ("dense", "skip")}
    if len(orderings) > 1:
        names = ", ".join(f"{p.name} ({p.ordering})" for p in parts)
        raise PatternError(
            f"union: parts are defined in different token orderings: {names}. Give vertical_stripe "
            "ordering='position_major' to unite it with multi_diagonal."
        )
    mask = parts[0].block_mask.clone()
    for p in parts[1:]:
        mask |= p.block_mask
    return mask, (orderings.pop() if orderings else "frame_major")
