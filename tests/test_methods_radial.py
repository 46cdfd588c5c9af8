"""Radial attention's block mask against a plain token-level port of the authors' mask generator."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsevdit import TokenLayout
from sparsevdit.methods import MethodError, build_for, parse_params
from sparsevdit.methods.radial import RadialParams, radial_block_mask


def reference_block_mask(layout: TokenLayout, b: int, p: RadialParams) -> torch.Tensor:
    """Token mask per frame pair, placed at its token offsets in an N x N grid, shrunk to blocks by the
    authors' rule (divisor: the block's real rows), OR-ed over frame pairs; text blocks dense."""
    n, f, t = layout.num_tokens, layout.tokens_per_frame, layout.frames
    nb = -(-n // b)
    rows_real = torch.tensor([min(b, n - k * b) for k in range(nb)], dtype=torch.float64)
    r = torch.arange(f)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            d = abs(i - j)
            if p.sink == "first_frame" and j == 0:
                local = torch.ones(f, f, dtype=torch.bool)
            else:
                decay_length = 2 ** f.bit_length() / 2 ** d.bit_length()
                if d < len(p.near_window):
                    window = int(p.near_window[d] * f)
                else:
                    window = max(decay_length * p.decay_factor, b)
                local = (r[None, :] - r[:, None]).abs() <= window
                if decay_length < p.thin_threshold and d % int(p.thin_threshold / decay_length) != 0:
                    local[:] = False
            big = torch.zeros(nb * b, nb * b, dtype=torch.bool)
            si, sj = layout.video_start + i * f, layout.video_start + j * f
            big[si : si + f, sj : sj + f] = local
            cols = big.view(nb, b, nb, b).sum(1).double()  # [q_block, k_block, column]
            density = cols / rows_real[:, None, None]
            frac = (density > 1 / 3).sum(-1) / ((cols > 0).sum(-1) + 1e-9)
            mask |= frac > 0.6
    is_text = torch.zeros(nb * b, dtype=torch.bool)
    t0, t1 = layout.text_range
    is_text[t0:t1] = True
    text_blocks = is_text.view(nb, b).any(1)
    return mask | text_blocks[:, None] | text_blocks[None, :]


layouts = st.builds(
    lambda frames, h, w, text, pos: TokenLayout(frames, h, w, text_tokens=text if pos != "none" else 0, text_position=pos),
    st.integers(1, 6), st.integers(1, 5), st.integers(1, 7), st.integers(1, 20), st.sampled_from(["none", "prefix", "suffix"]),
)
params = st.builds(
    lambda family, decay, near, thin: RadialParams(model_family=family, decay_factor=decay, near_window=near, thin_threshold=thin),
    st.sampled_from(["wan", "hunyuan"]),
    st.sampled_from([0.2, 0.5, 1.0, 3.0]),
    st.sampled_from([None, (1.0,), (1.0, 0.5), (1.0, 1.0, 0.25)]),
    st.sampled_from([1, 2, 4, 8, 16, 128]),
)


@settings(max_examples=200, deadline=None)
@given(layouts, st.sampled_from([1, 2, 3, 4, 5, 8, 16]), params)
def test_block_mask_matches_token_reference(layout, block_size, p):
    assert torch.equal(radial_block_mask(layout, block_size, p), reference_block_mask(layout, block_size, p))


def test_presets():
    wan, hun = RadialParams(), RadialParams(model_family="hunyuan")
    assert (wan.sink, wan.decay_factor, wan.near_window) == ("first_frame", 0.2, (1.0, 1.0))
    assert hun.sink == "none"
    assert RadialParams(near_window=[1.0, 0.5]).near_window == (1.0, 0.5)  # lists from JSON
    assert RadialParams(decay_factor=0.5).sink == "first_frame"  # a preset fills only what is left None


@pytest.mark.parametrize("bad", [
    {"model_family": "cog"}, {"decay_factor": 0}, {"decay_factor": float("nan")}, {"sink": "last"},
    {"near_window": (1.5,)}, {"near_window": 0.5}, {"thin_threshold": 0}, {"dense_steps": -1}, {"dense_layers": (1.5,)},
])
def test_bad_params_refused(bad):
    with pytest.raises(MethodError):
        parse_params("radial", bad)


def test_wan_480p_density():
    # docs/methods.md: Wan2.1 480p (21 x 30 x 52 latents), decay 0.2, block 128: density ~0.34.
    p = build_for("radial", TokenLayout(21, 30, 52), 128, {}, layer=0, head=0, step=0)
    assert 0.32 < p.density < 0.36


def test_sink_and_far_frames():
    lay = TokenLayout(8, 4, 4)  # 16 tokens a frame, 4 blocks of 4 a frame
    wan = radial_block_mask(lay, 4, RadialParams(thin_threshold=1))
    hun = radial_block_mask(lay, 4, RadialParams(model_family="hunyuan", thin_threshold=1))
    assert wan[28:32, 0:4].all() and not hun[28:32, 0:4].all()  # key frame 0 is a sink for Wan only
    assert not wan[0:4].all()  # queries of frame 0 are not made dense
    thinned = radial_block_mask(lay, 4, RadialParams(model_family="hunyuan", thin_threshold=128))
    assert thinned.sum() < hun.sum()


@settings(max_examples=100, deadline=None)
@given(layouts, st.sampled_from([4, 8, 16]), params)
def test_no_video_query_block_starves_when_frames_span_blocks(layout, block_size, p):
    # With F >= block_size a block holds at most two frames, one with half its rows: its d = 0 pair keeps it.
    if layout.tokens_per_frame < block_size:
        return
    mask = radial_block_mask(layout, block_size, p)
    assert bool(mask.any(1).all())


def test_build_for_checks_its_arguments():
    lay = TokenLayout(2, 4, 4)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(MethodError, match="block_size"):
            build_for("radial", lay, bad, layer=0, head=0, step=0)
    with pytest.raises(MethodError, match="layout"):
        build_for("radial", (2, 4, 4), 16, layer=0, head=0, step=0)
    with pytest.raises(MethodError, match="step"):
        build_for("radial", lay, 16, layer=0, head=0, step=-1)
