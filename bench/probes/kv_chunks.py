"""Key chunks side by side: our kernel with the keys in 1, 2, 3, 4 ranges (and launch orders), and what ``auto`` picks (GPU).

    PYTHONPATH=src python bench/probes/kv_chunks.py --shapes wan1.3b,wan14b,hunyuan --out $OUT/kv-chunks.json

Each case runs the autotuned kernel on the same q/k/v and index with ``kv_chunks`` forced to each
value, interleaved ``--rounds`` times (median kept), next to cuDNN dense SDPA timed in the same rounds.
Efficiency = cudnn_dense_ms x density / ms. The row also records ``auto_kv_chunks``'s choice, so the
rule (docs/kernel.md, "key chunks") can be checked against the best measured count.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, cudnn_dense, patterns_at, shape_tensors  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan1.3b,wan14b,hunyuan")
    ap.add_argument("--cases", default="dense:1.0,random:0.05,random:0.1,random:0.25,random:0.5,diagonal:0.1,diag+stripes:0.25")
    ap.add_argument("--chunks", default="1,2,3,4")
    ap.add_argument("--schedules", default="head", help="launch orders to compare (make_schedule kinds)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    variants = [f"{c}/{sched}" for c in args.chunks.split(",") for sched in args.schedules.split(",")]
    cases = []  # checked before any GPU work: a bad case found late lost a whole run's results
    for case in args.cases.split(","):
        kind, _, dens = case.partition(":")
        try:
            cases.append((case, kind, float(dens)))
        except ValueError:
            ap.error(f"case {case!r} is not kind:density (e.g. random:0.1, diagonal:0.25; dense is random:1.0)")
    rows = []
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        d = shape.head_dim
        q, k, v = shape_tensors(shape)
        cudnn = lambda: cudnn_dense(q, k, v)  # noqa: E731

        for case, kind, dens in cases:
            pats = patterns_at(kind, shape, dens)
            density = sum(p.density for p in pats) / len(pats)
            index = ts.block_index_for(pats, q.device)
            auto = ts.auto_kv_chunks(index, d, q.element_size(), q.device)
            fns = {c: (lambda c=c: ts.block_sparse_attention(q, k, v, index, 1 / math.sqrt(d), kv_chunks=int(c.split("/")[0]),
                                                             schedule=c.split("/")[1])[0])
                   for c in variants}
            ref = fns[variants[0]]()
            diff = {c: float((fns[c]().float() - ref.float()).abs().max()) for c in variants}
            times = {c: [] for c in variants}
            dense_times = []
            for _ in range(args.rounds):
                dense_times.append(median_ms(cudnn))
                for c, fn in fns.items():
                    times[c].append(median_ms(fn))
            cudnn_ms = statistics.median(dense_times)
            med = {c: statistics.median(t) for c, t in times.items()}
            row = dict(shape=shape_name, case=case, density=density, auto_kv_chunks=auto, cudnn_dense_ms=cudnn_ms,
                       ms={str(c): med[c] for c in variants}, ms_rounds={str(c): times[c] for c in variants},
                       efficiency={str(c): cudnn_ms * density / med[c] for c in variants},
                       best=min(med, key=med.get), max_abs_diff_vs_first=diff)
            rows.append(row)
            eff = "  ".join(f"{c}:{row['efficiency'][str(c)]:.3f}" for c in variants)
            print(f"{shape_name:8s} {case:18s} auto={auto} best={row['best']}  eff {eff}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    if args.out:
        write_json(args.out, {**environment(), "benchmark": "kv-chunks", "rounds": args.rounds, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
