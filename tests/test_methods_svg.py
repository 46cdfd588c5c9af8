"""Sparse VideoGen's masks and its per-head choice against a plain token-level reference of the rule."""

from __future__ import annotations

import math

import pytest
import torch

import sparsevdit as sv
from sparsevdit.methods import MethodError, parse_params
from sparsevdit.methods.svg import SVG, masks


def radius_rule(layout, p) -> int:
    """Largest kept |q - k| in tokens: <= ceil128(m F) for Wan, < floor128(m F) otherwise (at least the
    query's own token: our documented floor for tiny videos)."""
    m_f = layout.frames * (1 - math.sqrt(1 - p.sparsity)) * layout.tokens_per_frame
    if p.model_family == "wan":
        return math.ceil(m_f / 128) * 128
    return max(math.floor(m_f / 128) * 128 - 1, 0)


def token_masks(layout, p):
    """(spatial, temporal) bool [N, N] over the model's (frame-major) tokens, by the rule."""
    n, vs, T, F = layout.num_tokens, layout.video_start, layout.frames, layout.tokens_per_frame
    r = radius_rule(layout, p)
    idx = torch.arange(n)
    video = (idx >= vs) & (idx < vs + T * F)
    v = (idx - vs).clamp(min=0)
    position_major = (v % F) * T + v // F  # where a video token sits in the position-major order
    out = []
    for order in (v, position_major):
        keep = (order[:, None] - order[None, :]).abs() <= r
        if p.model_family == "wan":
            keep |= (order < F)[None, :]  # kv_idx < tokens_per_frame, in the order the head attends in
        keep &= video[:, None] & video[None, :]
        keep |= ~video[:, None] | ~video[None, :]  # text rows and columns dense
        out.append(keep)
    return out


def block_mask_rule(token_mask, layout, ordering, bs):
    """A block pair of the head's ordering is kept when any of its token pairs is."""
    perm = layout.permutation(ordering)
    m = token_mask[perm][:, perm]
    n = m.shape[0]
    nb = -(-n // bs)
    padded = torch.zeros(nb * bs, nb * bs, dtype=torch.bool)
    padded[:n, :n] = m
    return padded.view(nb, bs, nb, bs).any(3).any(1)


LAYOUTS = [sv.TokenLayout(8, 8, 8), sv.TokenLayout(6, 9, 10, 7, "prefix"), sv.TokenLayout(7, 10, 9, 13, "suffix"),
           sv.TokenLayout(12, 6, 7)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("bs", [16, 24, 64])
@pytest.mark.parametrize("family, sparsity", [("wan", 0.25), ("wan", 0.1), ("hunyuan", 0.25), ("hunyuan", 0.5)])
def test_masks_equal_the_rule(layout, bs, family, sparsity):
    p = parse_params("svg", {"sparsity": sparsity, "model_family": family})
    built = masks(layout, bs, p)
    for pattern, tokens, ordering in zip(built, token_masks(layout, p), ("frame_major", "position_major")):
        assert pattern.ordering == ordering
        assert torch.equal(pattern.block_mask, block_mask_rule(tokens, layout, ordering, bs)), (pattern.name, ordering)


def test_the_temporal_mask_is_sparse_with_the_wan_sink():
    # frame 0's own tokens lie in every position-major block: as a sink they would make it dense
    layout = sv.TokenLayout(21, 30, 52)
    spatial, temporal = masks(layout, 128, parse_params("svg", {}))
    assert 0.2 < spatial.density < 0.4 and 0.2 < temporal.density < 0.4


def choice_rule(q, k, v, layout, bs, p, layer, step):
    """Per head: 1 when the temporal mask's output on the sampled rows is nearer dense (MSE), else 0."""
    b, h, n, d = q.shape
    g = torch.Generator().manual_seed(p.seed * 1_000_003 + layer * 1009 + step)
    r = min(p.probe_rows, n)
    u = torch.rand(r, generator=g, dtype=torch.float64).tolist()
    rows = []  # one row drawn uniformly in each of r equal strata
    for i in range(r):
        lo, hi = math.floor(i * n / r), math.floor((i + 1) * n / r)
        rows.append(lo + math.floor(u[i] * (hi - lo)))
    assert rows == sorted(set(rows))
    kept = []
    for pattern in masks(layout, bs, p):  # the block masks, back in the model's token order
        inv = layout.inverse_permutation(pattern.ordering)
        kept.append(pattern.block_mask[inv // bs][:, inv // bs])
    choice = []
    for head in range(h):
        errs = []
        for keep in kept:
            err = 0.0
            for bi in range(b):
                for r in rows:
                    s = q[bi, head, r].double() @ k[bi, head].double().T / math.sqrt(d)
                    dense = torch.softmax(s, 0) @ v[bi, head].double()
                    sparse = torch.softmax(s.masked_fill(~keep[r], -math.inf), 0) @ v[bi, head].double()
                    err += float(((sparse - dense) ** 2).sum())
            errs.append(err)
        choice.append(int(errs[1] < errs[0]))
    return choice


@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=str)
@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_select_takes_the_mask_the_rule_chooses(layout, family):
    bs, n = 16, layout.num_tokens
    p = parse_params("svg", {"sparsity": 0.3, "model_family": family, "probe_rows": 24, "seed": 3})
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 6, n, 8) for _ in range(3))
    # heads that prefer one mask: temporal heads attend along the time axis (shared positions)
    pos = torch.randn(layout.tokens_per_frame, 8) * 3
    shared = torch.zeros(n, 8)
    shared[layout.video_start:layout.video_start + layout.frames * layout.tokens_per_frame] = pos.repeat(layout.frames, 1)
    q[:, :3] += shared
    k[:, :3] += shared
    # and spatial heads within their frame (tokens of one frame share a vector)
    frame = torch.randn(layout.frames, 8) * 3
    local = torch.zeros(n, 8)
    local[layout.video_start:layout.video_start + layout.frames * layout.tokens_per_frame] = (
        frame.repeat_interleave(layout.tokens_per_frame, 0))
    q[:, 3:] += local
    k[:, 3:] += local
    chosen = SVG.select(q, k, layout, bs, p, v=v, layer=2, step=5)
    expected = choice_rule(q, k, v, layout, bs, p, 2, 5)
    pair = masks(layout, bs, p)
    assert [pair.index(c) for c in chosen] == expected
    assert len(set(expected)) == 2  # the test sees both choices


def test_svg_needs_v_and_checks_its_parameters():
    layout = sv.TokenLayout(8, 8, 8)
    q = torch.randn(1, 2, layout.num_tokens, 8)
    with pytest.raises(MethodError, match="needs the layer's v"):
        SVG.select(q, q, layout, 16, parse_params("svg", {}))
    for bad, match in (({"sparsity": 0}, "sparsity"), ({"model_family": "cog"}, "model_family"),
                       ({"probe_rows": 0}, "probe_rows")):
        with pytest.raises(MethodError, match=match):
            parse_params("svg", bad)
