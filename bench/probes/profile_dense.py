"""Run cuDNN's dense attention and our kernel once each, for a profiler to compare (GPU).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section InstructionStats \
        --kernel-name regex:'block_sparse|cudnn|sm90|flash' --launch-skip 0 --launch-count 2 \
        python bench/probes/profile_dense.py --shape wan1.3b --density 1.0

Why: our kernel's dense rows run at 0.91-0.93 of cuDNN (docs/kernel.md) and no Triton 3.6 dense loop
we measured does better; Nsight Compute's stall reasons and pipe utilisation say which unit the gap
sits in. Both kernels are warmed up (compiled, our config fixed: no autotune launches) before the two
profiled launches, which come last and in this order: cuDNN, then ours.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.kernels import SHAPES, cudnn_dense, patterns_at, shape_tensors  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="wan1.3b", choices=sorted(SHAPES))
    ap.add_argument("--density", type=float, default=1.0, help="random block mask density for our kernel (1: dense)")
    ap.add_argument("--config", default="M128N64w4s2", help="our kernel's config label (the autotuned default)")
    args = ap.parse_args(argv)
    from kernel_variants import parse_config

    shape = SHAPES[args.shape]
    q, k, v = shape_tensors(shape)
    index = ts.block_index_for(patterns_at("random", shape, args.density), q.device)
    cfg = parse_config(args.config)
    scale = 1 / math.sqrt(shape.head_dim)

    def ours():
        return ts.block_sparse_attention(q, k, v, index, scale, config=cfg, kv_chunks=1)[0]

    for _ in range(3):  # compile and warm up outside the profiled launches
        cudnn_dense(q, k, v)
        ours()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    cudnn_dense(q, k, v)
    ours()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"{args.shape} density {args.density}: profiled cuDNN dense, then ours ({cfg.label()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
