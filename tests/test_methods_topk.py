"""The top-k / cumulative-mass selection rule against a plain loop over heads and query blocks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevdit as sv
from sparsevdit.methods import MethodError
from sparsevdit.methods.topk import TopKParams, patterns_from_index, select


def reference(q, k, layout, bs, p: TopKParams):
    """Per head and query block, by hand: pooled means, softmax, best blocks until tau / the fraction."""
    b, h, n, d = q.shape
    nb = -(-n // bs)
    blocks = [range(i * bs, min(n, (i + 1) * bs)) for i in range(nb)]
    text = set(range(*layout.text_range)) if layout.num_text else set()
    sink = set(range(layout.video_start, layout.video_start + min(p.sink_frames, layout.frames) * layout.tokens_per_frame))
    forced = {j for j, blk in enumerate(blocks) if any((t in text and p.keep_text) or t in sink for t in blk)}
    text_rows = {i for i, blk in enumerate(blocks) if any(t in text for t in blk)}
    out = []
    for head in range(h):
        qp = [q[:, head, list(blk)].double().mean((0, 1)) for blk in blocks]
        kp = [k[:, head, list(blk)].double().mean((0, 1)) for blk in blocks]
        rows = []
        for i in range(nb):
            s = torch.stack([qp[i] @ kp[j] / math.sqrt(d) for j in range(nb)])
            pr = torch.softmax(s, 0)
            order = sorted(range(nb), key=lambda j: -float(pr[j]))
            keep, mass = set(), 0.0
            for r, j in enumerate(order):
                if p.tau is not None:
                    if mass >= p.tau:
                        break
                elif r >= math.ceil(p.fraction * nb):
                    break
                keep.add(j)
                mass += float(pr[j])
            keep |= forced
            if i in text_rows:
                keep = set(range(nb))
            rows.append(sorted(keep))
        out.append(rows)
    return out


layouts = st.builds(lambda f, hh, w, t, pos: sv.TokenLayout(f, hh, w, t if pos != "none" else 0, pos),
                    st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(0, 5),
                    st.sampled_from(["none", "prefix", "suffix"]))


@settings(max_examples=40, deadline=None)
@given(layouts, st.integers(2, 9), st.sampled_from([{"tau": 0.5}, {"tau": 0.9}, {"tau": None, "fraction": 0.3},
                                                     {"tau": 0.7, "sink_frames": 1, "keep_text": False}]), st.integers(0, 99))
def test_selection_equals_the_rule(layout, bs, kw, seed):
    p = TopKParams(**kw)
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 2, layout.num_tokens, 8, generator=g) * 3 for _ in range(2))
    counts, indices = select(q, k, layout, bs, p)
    ref = reference(q, k, layout, bs, p)
    for h, rows in enumerate(ref):
        for i, keep in enumerate(rows):
            c = int(counts[h, i])
            assert indices[h, i, :c].tolist() == keep, (h, i)
            assert (indices[h, i, c:] == -1).all()


def test_selection_runs_on_the_backends_as_patterns():
    layout = sv.TokenLayout(4, 4, 4, text_tokens=3, text_position="prefix")
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 16, generator=torch.Generator().manual_seed(s)) for s in range(3))
    counts, indices = select(q, k, layout, 16, TopKParams(tau=0.6))
    pats = patterns_from_index(counts, indices, layout, 16, {"tau": 0.6})
    assert all(0 < p.density < 1 for p in pats)
    ref = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference")
    torch.testing.assert_close(sv.sparse_attention(q, k, v, pats, layout=layout, backend="blockwise"), ref,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, match", [({"tau": 0.9, "fraction": 0.2}, "exactly one"), ({"tau": None}, "exactly one"),
                                        ({"tau": 1.5}, "tau must be"), ({"tau": None, "fraction": 0}, "fraction must be"),
                                        ({"sink_frames": -1}, "sink_frames"), ({"keep_text": 1}, "keep_text")])
def test_bad_params_are_refused(bad, match):
    with pytest.raises(MethodError, match=match):
        TopKParams(**bad)


@pytest.mark.parametrize("layout, region", [(sv.TokenLayout(4, 8, 8), (1, 4, 4)),
                                            (sv.TokenLayout(3, 6, 10, 5, "prefix"), (2, 2, 4)),
                                            (sv.TokenLayout(5, 4, 6, 7, "suffix"), (1, 4, 4))])
def test_region_pooling_is_the_rule_on_the_tile_major_order(layout, region):
    """DraftAttention-style regions: the same rule over blocks of the tile-major order, where a (t, h, w)
    region (clipped at the grid's edge) is one block; the selection says its order and runs as patterns."""
    from sparsevdit.layout import tile_major_name
    from sparsevdit.methods.topk import TopK

    bs = region[0] * region[1] * region[2]
    p = TopKParams(tau=None, fraction=0.3, region=list(region))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8, generator=g) * 3 for _ in range(3))
    sel = TopK.select(q, k, layout, bs, p)
    ordering = tile_major_name(*region)
    assert sel.ordering == ordering
    perm = layout.permutation(ordering)
    expected = reference(q[:, :, perm], k[:, :, perm], layout, bs, TopKParams(tau=None, fraction=0.3))
    got = [[sel.indices[h, i, : sel.counts[h, i]].tolist() for i in range(sel.counts.shape[1])] for h in range(2)]
    assert got == expected
    pats = sel.to_patterns()
    assert {pt.ordering for pt in pats} == {ordering}
    torch.testing.assert_close(sv.sparse_attention(q, k, v, sel, layout=layout, backend="auto"),
                               sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference"), atol=1e-5, rtol=1e-5)


def test_a_region_must_be_one_block():
    from sparsevdit.methods.topk import TopK

    layout = sv.TokenLayout(4, 8, 8)
    q = torch.randn(1, 2, layout.num_tokens, 8)
    with pytest.raises(MethodError, match="must equal the block size 32"):
        TopK.select(q, q, layout, 32, TopKParams(region=(1, 4, 4)))
    with pytest.raises(MethodError, match="three positive integers"):
        TopKParams(region=(1, 4))
