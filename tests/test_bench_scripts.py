"""The GPU-only benchmark scripts' bookkeeping on the CPU: tiny shape, timings faked, kernels swapped for
CPU backends, so the rounds, medians and ratios they write are checked without a GPU."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch

from sparsevdit.bench.kernels import Shape
from sparsevdit.layout import TokenLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "probes"))

import dense_heads  # noqa: E402
import kernel_variants  # noqa: E402

TINY = Shape("tiny", 4, 64, TokenLayout(2, 4, 40))  # 320 tokens: three 128-token blocks, the last partial


def tiny_tensors(shape, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, shape.heads, shape.layout.num_tokens, shape.head_dim, generator=gen) for _ in range(3))


def test_dense_heads_rows(monkeypatch, tmp_path):
    # "triton" is swapped for the reference backend: the auto split must agree with it
    monkeypatch.setitem(dense_heads.SHAPES, "tiny", TINY)
    monkeypatch.setattr(dense_heads, "shape_tensors", tiny_tensors)
    monkeypatch.setattr(dense_heads, "cudnn_dense", lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    clock = itertools.count(1)
    monkeypatch.setattr(dense_heads, "median_ms", lambda fn: (fn(), float(next(clock)))[1])
    real = dense_heads.sv.sparse_attention
    monkeypatch.setattr(dense_heads.sv, "sparse_attention",
                        lambda *a, backend, **kw: real(*a, backend="reference" if backend == "triton" else backend, **kw))
    out = tmp_path / "dh.json"
    assert dense_heads.main(["--shapes", "tiny", "--dense-heads", "0.5", "--rounds", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["case"] == "all heads dense" and len(rows[0]["ms_rounds"]["cudnn"]) == 3
    mixed = rows[1]
    assert mixed["case"].startswith("2 of 4 heads dense")
    assert mixed["max_abs_diff"] < 1e-4
    # rounds interleave auto and triton: auto got the odd clock readings, triton the even ones
    assert mixed["ms"]["triton"] == mixed["ms"]["auto"] + 1
    assert abs(mixed["speedup_auto"] - mixed["ms"]["triton"] / mixed["ms"]["auto"]) < 1e-12


def test_kernel_variants_rounds(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEVDIT_EXPERIMENTAL_WS", "1")  # main() sets it; keep it from leaking past this test
    monkeypatch.setitem(kernel_variants.SHAPES, "tiny", TINY)
    monkeypatch.setattr(kernel_variants, "shape_tensors", tiny_tensors)
    marker = object()
    monkeypatch.setattr(kernel_variants, "cudnn_dense", lambda q, k, v: marker)
    monkeypatch.setattr(kernel_variants.ts, "block_sparse_attention", lambda q, *a, **kw: (torch.zeros_like(q), None))
    monkeypatch.setattr(kernel_variants, "spot_check", lambda *a: 0.0)
    monkeypatch.setattr(kernel_variants.torch.cuda, "empty_cache", lambda: None)
    cudnn = itertools.chain([10.0], itertools.cycle([20.0, 40.0]))  # the shape's reading, then per round

    def median_ms(fn):
        return next(cudnn) if fn() is marker else 2.0

    monkeypatch.setattr(kernel_variants, "median_ms", median_ms)
    out = tmp_path / "kv.json"
    assert kernel_variants.main(["--shapes", "tiny", "--cases", "random:0.5", "--configs", "M128N64w4s2-lz",
                                 "--rounds", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["variant"] == "cudnn" and rows[0]["ms"] == 10.0
    variants = {r["variant"]: r for r in rows[1:]}
    assert set(variants) == {"auto", "M128N64w4s2-lz"}
    for r in variants.values():  # the case's cuDNN rounds 20, 40, 20: median 20
        assert r["ms_rounds"] == [2.0, 2.0, 2.0] and r["cudnn_dense_ms"] == 20.0
        assert abs(r["efficiency"] - 20.0 * r["density"] / 2.0) < 1e-12
