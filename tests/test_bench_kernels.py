"""`bench kernels` table logic on the CPU: timings faked, so the rounds and the per-case baseline are checked
without a GPU (the real run is `python bench/kernels.py` on one)."""

from __future__ import annotations

import itertools

import pytest
import torch

from sparsevdit.bench import kernels as bk
from sparsevdit.layout import TokenLayout


class FakeBackend:
    def cannot_run(self, call):
        return None

    def run(self, q, k, v, call, scale):
        return torch.zeros_like(q), None


def fake_setup(monkeypatch, clock):
    """A tiny shape on the CPU; cuDNN takes 10 ms at the first reading and 20 ms after, the fake backend 1 ms."""
    monkeypatch.setitem(bk.SHAPES, "tiny", bk.Shape("tiny", 2, 64, TokenLayout(2, 4, 8)))
    monkeypatch.setattr(bk, "shape_tensors", lambda shape, dtype=torch.bfloat16: tuple(
        torch.zeros(1, shape.heads, shape.layout.num_tokens, shape.head_dim) for _ in range(3)))
    marker = object()
    monkeypatch.setattr(bk, "cudnn_dense", lambda q, k, v: marker)
    monkeypatch.setattr(bk, "get_backend", lambda name: FakeBackend())
    monkeypatch.setattr(bk.torch.cuda, "empty_cache", lambda: None)

    def median_ms(fn):
        return next(clock) if fn() is marker else 1.0

    monkeypatch.setattr(bk, "median_ms", median_ms)


def test_rows_divide_by_the_shape_baseline(monkeypatch):
    fake_setup(monkeypatch, itertools.chain([10.0, 10.0], itertools.repeat(20.0)))
    rows = bk.run(["tiny"], [0.5], ["random"], ["fake"], check=False, log=lambda *a: None, rounds=2)
    sparse = [r for r in rows if r["backend"] == "fake" and r["pattern"] == "random"]
    assert sparse and all(r["cudnn_dense_ms"] == 10.0 and r["ms_rounds"] == [1.0, 1.0] for r in sparse)
    assert "cudnn_case_ms_rounds" not in sparse[0]


def test_baseline_per_case(monkeypatch):
    fake_setup(monkeypatch, itertools.chain([10.0, 10.0], itertools.repeat(20.0)))
    rows = bk.run(["tiny"], [0.5], ["random"], ["fake"], check=False, log=lambda *a: None, rounds=2,
                  baseline_per_case=True)
    sparse = [r for r in rows if r["backend"] == "fake" and r["pattern"] == "random"][0]
    assert sparse["cudnn_case_ms_rounds"] == [20.0, 20.0] and sparse["cudnn_dense_ms"] == 20.0
    assert abs(sparse["efficiency"] - 20.0 * sparse["density"] / 1.0) < 1e-9
    assert [r for r in rows if r["backend"] == "cudnn"][0]["ms"] == 10.0  # the shape's own row stays


def test_backend_variants():
    import math

    from sparsevdit.bench.kernels import backend_spec
    from sparsevdit.kernels import triton_backend

    backend, setting = backend_spec("triton@tl")
    assert backend.name == "triton"
    saved = triton_backend.gluon_min_blocks
    with setting():
        assert triton_backend.gluon_min_blocks == math.inf  # the Gluon path is off while it is timed
    assert triton_backend.gluon_min_blocks == saved
    assert backend_spec("flex")[0].name == "flex"
    with pytest.raises(ValueError, match="triton@tl"):
        backend_spec("triton@fast")


@pytest.mark.parametrize("target", [0.15, 0.3])
def test_topk_rows_have_uneven_lists_at_the_target_density(target):
    shape = bk.Shape("small", 3, 32, TokenLayout(6, 16, 16, 20, "prefix"))
    sel = bk.topk_selection_at(shape, target, 32, device="cpu")
    assert abs(sel.density - target) < 0.03
    video_rows = sel.counts[:, 1:].float()  # the first query block holds text: it keeps every key block
    assert float(video_rows.std()) > 0.2 * float(video_rows.mean())  # lists of different lengths
    pats = bk.topk_selection_at(shape, target, 32, device="cpu").to_patterns()
    assert abs(sum(p.density for p in pats) / len(pats) - sel.density) < 1e-12
