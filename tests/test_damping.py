"""Logit damping (UltraViCo): the rule on a hand-built case, and every backend that applies it equal to
the reference on random inputs (text prefix, partial blocks, reordered heads, barred rows)."""

from __future__ import annotations

import math

import pytest
import torch

import sparsevdit as sv
from sparsevdit import patterns as P
from sparsevdit.kernels import BackendError
from sparsevdit.kernels.damping import LogitDamping


def test_the_rule_on_a_hand_built_case():
    # 3 frames of 2 tokens after 1 text token: tokens 0 (text), 1-2 (frame 0), 3-4 (frame 1), 5-6 (frame 2)
    layout = sv.TokenLayout(3, 1, 2, text_tokens=1, text_position="prefix")
    d = LogitDamping(window=2, alpha=0.5, bar_first_frame=True)
    tok = torch.arange(7)
    scores = torch.tensor([[1.0 if (i + j) % 2 else -1.0 for j in range(7)] for i in range(7)])
    out = d.apply_to_scores(scores, tok, tok, layout)
    for i in range(7):
        for j in range(7):
            video = i >= 1 and j >= 1
            far = video and abs(i - j) > 2
            if far and i in (1, 2):  # first-frame queries: barred from far keys
                expect = -math.inf
            elif far and scores[i, j] > 0:
                expect = 0.5 * float(scores[i, j])
            else:  # near pairs, text rows and columns, negative logits: unchanged
                expect = float(scores[i, j])
            assert float(out[i, j]) == expect, (i, j)
    assert d.token_range(layout) == (1, 7, 3)
    assert LogitDamping(2, 0.5, bar_first_frame=False).token_range(layout) == (1, 7, 1)


@pytest.mark.parametrize("bad", [dict(window=-1, alpha=0.5), dict(window=1.5, alpha=0.5), dict(window=2, alpha=1.5),
                                 dict(window=2, alpha=float("nan")), dict(window=2, alpha=0.5, bar_first_frame=1)])
def test_bad_damping_is_refused(bad):
    with pytest.raises(ValueError, match="logit damping"):
        LogitDamping(**bad)


def _inputs(layout, heads=2, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, layout.num_tokens, dim, generator=g, dtype=dtype) * 2 for _ in range(3)]


LAYOUT = sv.TokenLayout(4, 4, 5, text_tokens=3, text_position="prefix")  # 83 tokens: a partial block of 16


@pytest.mark.parametrize("bar", [True, False])
def test_blockwise_equals_reference_with_damping_on_any_ordering(bar):
    d = LogitDamping(window=25, alpha=0.3, bar_first_frame=bar)
    q, k, v = _inputs(LAYOUT, heads=3)
    pats = [P.build("diagonal", LAYOUT, block_size=16, width=40), P.build("dense", LAYOUT, block_size=16),
            P.build("multi_diagonal", LAYOUT, block_size=16, width=20)]  # the last is position-major
    ref, ref_lse = sv.sparse_attention(q, k, v, pats, layout=LAYOUT, backend="reference", damping=d, return_lse=True)
    out, lse = sv.sparse_attention(q, k, v, pats, layout=LAYOUT, backend="blockwise", damping=d, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    plain = sv.sparse_attention(q, k, v, pats, layout=LAYOUT, backend="reference")
    assert (plain - ref).abs().max() > 1e-2  # damping changed the output
    auto = sv.sparse_attention(q, k, v, pats, layout=LAYOUT, damping=d)  # auto skips masked_sdpa and sdpa
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-5)


def test_a_row_barred_from_every_key_is_zero():
    # frame-0 queries keep only far key blocks (a stripe on the last frame) and the bar removes them all
    layout = sv.TokenLayout(4, 4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 3] = True
    pat = sv.patterns.BlockPattern.from_block_mask("last_frame", {}, layout, 16, mask, "frame_major")
    q, k, v = _inputs(layout, heads=1)
    d = LogitDamping(window=20, alpha=0.9)
    for backend in ("reference", "blockwise"):
        out, lse = sv.sparse_attention(q, k, v, pat, layout=layout, backend=backend, damping=d, return_lse=True)
        assert torch.isfinite(out).all() and out[0, 0, :16].abs().max() == 0 and torch.isneginf(lse[0, 0, :16]).all()
        assert out[0, 0, 16:].abs().max() > 0


def test_backends_without_damping_refuse_it_by_name():
    q, k, v = _inputs(LAYOUT)
    pat = P.build("diagonal", LAYOUT, block_size=16, width=40)
    for backend in ("masked_sdpa", "sdpa"):
        with pytest.raises(BackendError, match="does not apply logit damping"):
            sv.sparse_attention(q, k, v, pat, layout=LAYOUT, backend=backend, damping=LogitDamping(10, 0.5))
    with pytest.raises(ValueError, match="LogitDamping or None"):
        sv.sparse_attention(q, k, v, pat, layout=LAYOUT, damping=(10, 0.5))
