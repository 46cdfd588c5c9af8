"""sliding_tile against a token-level port of the STA rule, on layouts where tiles and blocks do not align."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevdit as sv
from sparsevdit.layout import tile_major_name
from sparsevdit.methods import MethodError, build_for, get_method, parse_params

METHOD = get_method("sliding_tile")


def reference_block_mask(layout, block_size, tile, window, dilation=(1, 1, 1)):
    """Token pairs by the rule (tile-major sequence), rounded out to blocks; text rows and columns dense."""
    n = layout.num_tokens
    perm = layout.permutation(tile_major_name(*tile))
    vs, ve = layout.video_start, layout.video_start + layout.video_tokens
    grid = [-(-size // t) for size, t in zip((layout.frames, layout.height, layout.width), tile)]

    def coords(pos):
        old = int(perm[pos]) - vs
        f, rest = divmod(old, layout.tokens_per_frame)
        y, x = divmod(rest, layout.width)
        return f // tile[0], y // tile[1], x // tile[2]

    def keeps(q, k):
        for a, b, size, w, d in zip(coords(q), coords(k), grid, window, dilation):
            if a % d != b % d:  # another dilation group
                return False
            group = len(range(a % d, size, d))  # tiles in a's group; positions a // d, b // d inside it
            if w >= group:
                continue
            centre = min(max(a // d, w // 2), group - 1 - w // 2)
            if abs(centre - b // d) > w // 2:
                return False
        return True

    nb = -(-n // block_size)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            text = not (vs <= q < ve) or not (vs <= k < ve)
            if text or keeps(q, k):
                mask[q // block_size, k // block_size] = True
    return mask


layouts = st.builds(
    lambda f, h, w, text, pos: sv.TokenLayout(f, h, w, text if pos != "none" else 0, pos),
    st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(0, 5), st.sampled_from(["none", "prefix", "suffix"]))


@settings(max_examples=60, deadline=None)
@given(layouts, st.integers(1, 12), st.tuples(*[st.integers(1, 3)] * 3), st.tuples(*[st.integers(1, 4)] * 3),
       st.tuples(*[st.integers(1, 3)] * 3))
def test_block_mask_matches_the_token_rule(layout, block_size, tile, window, dilation):
    params = parse_params(METHOD, {"tile": list(tile), "window": list(window), "dilation": list(dilation)})
    pattern = build_for(METHOD, layout, block_size, params, layer=0, head=0, step=0)
    assert pattern.ordering == tile_major_name(*tile)
    assert torch.equal(pattern.block_mask, reference_block_mask(layout, block_size, tile, window, dilation))


def test_dilation_keeps_every_other_tile_and_presets_fill_the_fields():
    from sparsevdit.methods.sliding_tile import axis_keep

    # 6 tiles, dilation 2: groups {0, 2, 4} and {1, 3, 5}; window 1 keeps the tile itself, window 3
    # its group neighbours, the centre clamped inside the group
    assert torch.equal(axis_keep(6, 1, 2), torch.eye(6, dtype=torch.bool))
    keep = axis_keep(6, 3, 2)
    assert keep[0].nonzero().flatten().tolist() == [0, 2, 4] and keep[3].nonzero().flatten().tolist() == [1, 3, 5]
    assert torch.equal(axis_keep(7, 3), axis_keep(7, 3, 1))
    wan, hy = parse_params(METHOD, {"model_family": "wan"}), parse_params(METHOD, {"model_family": "hunyuan"})
    assert (wan.tile, wan.window, hy.tile, hy.window) == ((3, 8, 8), (3, 3, 3), (6, 8, 8), (5, 3, 3))
    assert parse_params(METHOD, {"model_family": "hunyuan", "window": [3, 3, 3]}).window == (3, 3, 3)
    assert parse_params(METHOD, {}).tile == (6, 8, 8)
    with pytest.raises(MethodError, match="model_family must be one of"):
        parse_params(METHOD, {"model_family": "cog"})


def test_aligned_tiles_keep_whole_tile_windows_and_run_on_the_kernels():
    # 4 x 8 x 8 tokens in tiles of 2 x 4 x 4 = 32 tokens = one block each: a 2 x 2 x 2 grid of tiles
    layout = sv.TokenLayout(4, 8, 8)
    params = parse_params(METHOD, {"tile": [2, 4, 4], "window": [1, 1, 1]})
    pattern = build_for(METHOD, layout, 32, params, layer=0, head=0, step=0)
    # window 1: each of the 8 tiles (= blocks) keeps only itself
    assert torch.equal(pattern.block_mask, torch.eye(8, dtype=torch.bool)) and pattern.density == 1 / 8
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8, dtype=torch.float64) for _ in range(3))
    ref = sv.sparse_attention(q, k, v, pattern, layout=layout, backend="reference")
    torch.testing.assert_close(sv.sparse_attention(q, k, v, pattern, layout=layout, backend="blockwise"), ref,
                               atol=1e-6, rtol=1e-6)
    full = build_for(METHOD, layout, 32, parse_params(METHOD, {"tile": [2, 4, 4], "window": [2, 2, 2]}),
                     layer=0, head=0, step=0)
    assert full.density == 1.0  # an even window covers k + 1 tiles: the whole 2-tile axis


@pytest.mark.parametrize("bad", [{"tile": [0, 8, 8]}, {"tile": [6, 8]}, {"window": [3, 3, True]}, {"window": "3,3,3"},
                                 {"dilation": [0, 1, 1]}])
def test_bad_tiles_and_windows_are_refused(bad):
    with pytest.raises(MethodError, match="three positive integers"):
        parse_params(METHOD, bad)
