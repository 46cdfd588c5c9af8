"""TokenLayout: sizes, validation and token orderings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsevdit.layout import TokenLayout, available_orderings

# strategies --------------------------------------------------------------------------------------


@st.composite
def layouts(draw, max_frames: int = 5, max_height: int = 5, max_width: int = 6, max_text: int = 20) -> TokenLayout:
    frames = draw(st.integers(1, max_frames))
    height = draw(st.integers(1, max_height))
    width = draw(st.integers(1, max_width))
    position = draw(st.sampled_from(["none", "prefix", "suffix"]))
    text = 0 if position == "none" else draw(st.integers(0, max_text))
    return TokenLayout(frames, height, width, text, position)


# sizes -------------------------------------------------------------------------------------------


def test_sizes_without_text():
    lay = TokenLayout(3, 4, 5)
    assert lay.text_tokens == 0 and lay.text_position == "none"
    assert lay.tokens_per_frame == 20
    assert lay.video_tokens == 60
    assert lay.num_text == 0
    assert lay.num_tokens == 60
    assert lay.video_start == 0
    start, end = lay.text_range
    assert start == end  # empty


def test_sizes_text_prefix():
    lay = TokenLayout(2, 3, 4, text_tokens=7, text_position="prefix")
    assert lay.tokens_per_frame == 12
    assert lay.video_tokens == 24
    assert lay.num_text == 7
    assert lay.num_tokens == 31
    assert lay.video_start == 7
    assert lay.text_range == (0, 7)


def test_sizes_text_suffix():
    lay = TokenLayout(2, 3, 4, text_tokens=7, text_position="suffix")
    assert lay.tokens_per_frame == 12
    assert lay.num_tokens == 31
    assert lay.video_start == 0
    assert lay.text_range == (24, 31)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_zero_text_tokens_with_position(position):
    lay = TokenLayout(2, 2, 2, text_tokens=0, text_position=position)
    assert lay.num_tokens == 8
    assert lay.video_start == 0
    start, end = lay.text_range
    assert start == end


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_sizes_consistent(lay):
    assert lay.tokens_per_frame == lay.height * lay.width
    assert lay.num_tokens == lay.frames * lay.height * lay.width + lay.text_tokens
    start, end = lay.text_range
    assert end - start == lay.text_tokens
    assert 0 <= start <= end <= lay.num_tokens
    # video and text tokens tile the sequence
    video = set(range(lay.video_start, lay.video_start + lay.video_tokens))
    text = set(range(start, end))
    assert video.isdisjoint(text)
    assert video | text == set(range(lay.num_tokens))


def test_to_dict_roundtrip_and_str():
    lay = TokenLayout(2, 3, 4, 5, "suffix")
    assert TokenLayout(**lay.to_dict()) == lay
    s = str(lay)
    assert "2x3x4" in s and "5 text" in s and "suffix" in s and str(lay.num_tokens) in s
    assert "text" not in str(TokenLayout(2, 3, 4))


def test_layout_is_frozen_and_hashable():
    lay = TokenLayout(2, 3, 4)
    assert hash(lay) == hash(TokenLayout(2, 3, 4))
    with pytest.raises(Exception):
        lay.frames = 5  # type: ignore[misc]


# validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(frames=0, height=2, width=2), "frames"),
        (dict(frames=-1, height=2, width=2), "frames"),
        (dict(frames=2.0, height=2, width=2), "frames"),
        (dict(frames=True, height=2, width=2), "frames"),
        (dict(frames="2", height=2, width=2), "frames"),
        (dict(frames=2, height=0, width=2), "height"),
        (dict(frames=2, height=None, width=2), "height"),
        (dict(frames=2, height=2, width=0), "width"),
        (dict(frames=2, height=2, width=-3), "width"),
        (dict(frames=2, height=2, width=1.5), "width"),
        (dict(frames=2, height=2, width=2, text_tokens=-1, text_position="prefix"), "text_tokens"),
        (dict(frames=2, height=2, width=2, text_tokens=1.0, text_position="prefix"), "text_tokens"),
        (dict(frames=2, height=2, width=2, text_tokens=True, text_position="prefix"), "text_tokens"),
        (dict(frames=2, height=2, width=2, text_tokens=5), "text_tokens"),  # text but position 'none'
        (dict(frames=2, height=2, width=2, text_tokens=5, text_position="middle"), "text_position"),
        (dict(frames=2, height=2, width=2, text_position="PREFIX"), "text_position"),
        (dict(frames=2, height=2, width=2, text_position=None), "text_position"),
    ],
)
def test_bad_sizes_raise_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        TokenLayout(**kwargs)
    bad = kwargs[field] if field in kwargs else None
    if bad is not None:
        assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_text_position_error_lists_choices():
    with pytest.raises(ValueError) as info:
        TokenLayout(1, 1, 1, 2, "middle")
    for choice in ("none", "prefix", "suffix"):
        assert choice in str(info.value)


# orderings ---------------------------------------------------------------------------------------


def test_available_orderings():
    assert {"frame_major", "position_major"} <= set(available_orderings())


@pytest.mark.parametrize("position, text", [("none", 0), ("prefix", 3), ("suffix", 4)])
def test_frame_major_is_identity(position, text):
    lay = TokenLayout(3, 2, 3, text, position)
    assert torch.equal(lay.permutation("frame_major"), torch.arange(lay.num_tokens))
    assert torch.equal(lay.inverse_permutation("frame_major"), torch.arange(lay.num_tokens))


@pytest.mark.parametrize("position, text", [("none", 0), ("prefix", 3), ("suffix", 4)])
def test_position_major_moves_frame_f_position_p_to_p_times_frames_plus_f(position, text):
    lay = TokenLayout(3, 2, 5, text, position)
    perm = lay.permutation("position_major")
    inv = lay.inverse_permutation("position_major")
    assert perm.dtype == torch.int64 and perm.shape == (lay.num_tokens,)
    vs = lay.video_start
    tpf = lay.tokens_per_frame
    for f in range(lay.frames):
        for p in range(tpf):
            old = vs + f * tpf + p
            new = vs + p * lay.frames + f
            assert int(perm[new]) == old, (f, p)
            assert int(inv[old]) == new, (f, p)
    # text tokens stay where they are
    start, end = lay.text_range
    for t in range(start, end):
        assert int(perm[t]) == t and int(inv[t]) == t
    # reordering a sequence puts "same place in every frame" next to each other
    x = torch.arange(lay.num_tokens)[:, None].float()
    y = x[perm]
    for p in range(tpf):
        run = y[vs + p * lay.frames : vs + (p + 1) * lay.frames, 0].long().tolist()
        assert run == [vs + f * tpf + p for f in range(lay.frames)]


@settings(max_examples=60, deadline=None)
@given(layouts(), st.sampled_from(["frame_major", "position_major", "tile_major_2x2x3", "tile_major_6x8x8", "tile_major_1x1x1"]))
def test_permutation_and_inverse_compose_to_identity(lay, ordering):
    perm = lay.permutation(ordering)
    inv = lay.inverse_permutation(ordering)
    n = lay.num_tokens
    ident = torch.arange(n)
    assert perm.shape == inv.shape == (n,)
    assert torch.equal(torch.sort(perm).values, ident)  # a permutation
    assert torch.equal(perm[inv], ident)
    assert torch.equal(inv[perm], ident)
    x = torch.randn(2, n, 3)
    assert torch.equal(x[..., perm, :][..., inv, :], x)
    # text tokens never move
    start, end = lay.text_range
    assert torch.equal(perm[start:end], ident[start:end])


def test_unknown_ordering_raises():
    lay = TokenLayout(2, 2, 2)
    with pytest.raises(ValueError, match="zigzag") as info:
        lay.permutation("zigzag")
    assert "frame_major" in str(info.value) and "position_major" in str(info.value)
    with pytest.raises(ValueError, match="zigzag"):
        lay.inverse_permutation("zigzag")


# tile-major (Sliding Tile Attention) ----------------------------------------------------------------
def _tile_reference(lay, t, h, w):
    """Tile after tile over the tile grid (frame-major), frame-major inside a tile, edge tiles clipped."""
    order = []
    for f0 in range(0, lay.frames, t):
        for y0 in range(0, lay.height, h):
            for x0 in range(0, lay.width, w):
                for f in range(f0, min(f0 + t, lay.frames)):
                    for y in range(y0, min(y0 + h, lay.height)):
                        for x in range(x0, min(x0 + w, lay.width)):
                            order.append(lay.video_start + (f * lay.height + y) * lay.width + x)
    return order


@pytest.mark.parametrize("position, text", [("none", 0), ("prefix", 3), ("suffix", 4)])
@pytest.mark.parametrize("grid, tile", [((4, 6, 5), (2, 3, 2)), ((3, 4, 4), (6, 8, 8)), ((2, 2, 2), (1, 1, 1))])
def test_tile_major_matches_a_plain_loop_with_clipped_edge_tiles(position, text, grid, tile):
    lay = TokenLayout(*grid, text, position)
    from sparsevdit.layout import tile_major_name

    perm = lay.permutation(tile_major_name(*tile)).tolist()
    start, end = lay.text_range
    video = _tile_reference(lay, *tile)
    vs = lay.video_start
    assert perm[vs:vs + lay.video_tokens] == video
    assert perm[start:end] == list(range(start, end))


def test_tile_major_names_are_checked():
    from sparsevdit.layout import is_ordering, register_ordering, tile_major_name, tile_size

    assert tile_size("tile_major_6x8x8") == (6, 8, 8) and is_ordering("tile_major_6x8x8")
    for bad in ("tile_major_0x8x8", "tile_major_6x8", "tile_major_6x8x8x1", "tile_major_06x8x8", "tile_major_axbxc"):
        assert tile_size(bad) is None and not is_ordering(bad)
        with pytest.raises(ValueError, match="tile_major_TxHxW"):
            TokenLayout(2, 2, 2).permutation(bad)
    with pytest.raises(ValueError, match="positive integers"):
        tile_major_name(0, 8, 8)
    with pytest.raises(ValueError, match="built-in tile family"):
        register_ordering("tile_major_mine")
    assert "tile_major_6x8x8" in available_orderings()


def test_patterns_and_kernels_run_in_tile_major_order():
    from sparsevdit import patterns as P
    import sparsevdit as sv

    lay = TokenLayout(3, 5, 6, 2, "prefix")  # tiles do not divide the grid: edge tiles are partial
    pat = P.build("vertical_stripe", lay, block_size=8, sink_frames=1, ordering="tile_major_2x2x4")
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 8, dtype=torch.float64) for _ in range(3))
    ref = sv.sparse_attention(q, k, v, pat, layout=lay, backend="reference")
    torch.testing.assert_close(sv.sparse_attention(q, k, v, pat, layout=lay, backend="blockwise"), ref, atol=1e-5, rtol=1e-5)
    # the reference equals dense attention under the token mask the pattern implies, in frame-major order
    mask = pat.token_mask()
    inv = lay.inverse_permutation(pat.ordering)
    frame_major = mask[inv][:, inv]
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=frame_major)
    torch.testing.assert_close(ref, dense, atol=1e-5, rtol=1e-5)
