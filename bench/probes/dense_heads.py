"""Dense heads in a sparse layer: ``auto`` (dense heads on cuDNN, the rest on our kernel) vs all heads
fused in our kernel, side by side (GPU).

    PYTHONPATH=src python bench/probes/dense_heads.py --shapes wan1.3b,wan14b --dense-heads 0.25,0.5 --out $OUT/dense-heads.json

A searched plan keeps some heads dense. ``sparse_attention(backend="auto")`` sends those to the sdpa
backend (cuDNN first) and the sparse ones to ``triton``: two launches instead of one, and the dense
heads at cuDNN's rate instead of our kernel's (0.91-0.93 of it). The layer here: the first fraction of
the heads dense, the others a diagonal band at about 10%. Also timed: dense SDPA with PyTorch's own
backend order and with cuDNN forced, to show what the sdpa backend's cuDNN-first order buys. Every
variant interleaved ``--rounds`` times (median kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

import sparsevdit as sv  # noqa: E402
from sparsevdit import patterns as P  # noqa: E402
from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, cudnn_dense, patterns_at, shape_tensors  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan1.3b,wan14b")
    ap.add_argument("--dense-heads", default="0.25,0.5", help="fractions of the heads that are dense")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="out/probes/dense-heads.json")  # never bench/results by default
    args = ap.parse_args(argv)
    rows = []
    result = {**environment(), "benchmark": "dense-heads", "rows": rows}
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        q, k, v = shape_tensors(shape)
        lay = shape.layout
        variants = {"sdpa_default": lambda: F.scaled_dot_product_attention(q, k, v), "cudnn": lambda: cudnn_dense(q, k, v)}
        times = {key: [] for key in variants}
        for _ in range(args.rounds):
            for key, fn in variants.items():
                times[key].append(median_ms(fn))
        dense = {key: statistics.median(t) for key, t in times.items()}
        rows.append(dict(shape=name, case="all heads dense", ms=dense, ms_rounds=times))
        print(f"{name}: dense SDPA, torch's order {dense['sdpa_default']:.2f} ms, cuDNN {dense['cudnn']:.2f} ms", flush=True)
        band = patterns_at("diagonal", shape, 0.1)[0]
        full = P.build("dense", lay, block_size=band.block_size)
        for frac in (float(f) for f in args.dense_heads.split(",")):
            n_dense = round(frac * shape.heads)
            pats = [full] * n_dense + [band] * (shape.heads - n_dense)
            fns = {backend: (lambda b=backend: sv.sparse_attention(q, k, v, pats, layout=lay, backend=b))
                   for backend in ("auto", "triton")}
            outs = {b: fn() for b, fn in fns.items()}
            diff = float((outs["auto"].float() - outs["triton"].float()).abs().max())
            del outs
            times = {b: [] for b in fns}
            for _ in range(args.rounds):
                for b, fn in fns.items():
                    times[b].append(median_ms(fn))
            ms = {b: statistics.median(t) for b, t in times.items()}
            rows.append(dict(shape=name, case=f"{n_dense} of {shape.heads} heads dense, others diagonal "
                             f"{band.density:.1%}", ms=ms, ms_rounds=times, speedup_auto=ms["triton"] / ms["auto"],
                             max_abs_diff=diff))
            print(f"  {n_dense:2d}/{shape.heads} dense: auto {ms['auto']:.3f} ms, all in triton {ms['triton']:.3f} ms "
                  f"({ms['triton'] / ms['auto']:.3f}x), max diff {diff:.1e}", flush=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
