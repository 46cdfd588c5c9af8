"""How much do cuDNN's dense time and ours move within one run? (GPU)

    PYTHONPATH=src python bench/probes/baseline_spread.py --shapes wan1.3b,wan14b --rounds 8 --out $OUT/spread.json

Efficiency divides cuDNN's dense time by ours, so a slow or fast stretch of either moves it. This times
cuDNN dense SDPA, our kernel dense and our kernel on a random 10% mask, interleaved ``--rounds`` times on
the same inputs, and records the SM clock, power and temperature (nvidia-smi) after each round.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, cudnn_dense, patterns_at, shape_tensors  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def gpu_state() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan1.3b,wan14b")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        d = shape.head_dim
        q, k, v = shape_tensors(shape)
        dense_index = ts.block_index_for(patterns_at("dense", shape, 1.0), q.device)
        sparse_pats = patterns_at("random", shape, 0.1)
        sparse_index = ts.block_index_for(sparse_pats, q.device)

        fns = {"cudnn": lambda: cudnn_dense(q, k, v),
               "triton_dense": lambda: ts.block_sparse_attention(q, k, v, dense_index, 1 / math.sqrt(d)),
               "triton_random10": lambda: ts.block_sparse_attention(q, k, v, sparse_index, 1 / math.sqrt(d))}
        for fn in fns.values():
            fn()
        times = {name: [] for name in fns}
        states = []
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(median_ms(fn))
            states.append(gpu_state())
        density = sum(p.density for p in sparse_pats) / len(sparse_pats)
        spread = {name: (max(t) - min(t)) / statistics.median(t) for name, t in times.items()}
        eff10 = [c * density / s for c, s in zip(times["cudnn"], times["triton_random10"])]
        eff_dense = [c / s for c, s in zip(times["cudnn"], times["triton_dense"])]
        row = dict(shape=shape_name, rounds=args.rounds, ms=times, gpu_state=states, spread=spread,
                   efficiency_dense_per_round=eff_dense, efficiency_random10_per_round=eff10)
        rows.append(row)
        print(shape_name, {k: f"{v:.1%}" for k, v in spread.items()},
              "eff dense", [round(e, 3) for e in eff_dense], "eff 10%", [round(e, 3) for e in eff10], flush=True)
        print("  states", states, flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    if args.out:
        write_json(args.out, {**environment(), "benchmark": "baseline-spread", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
