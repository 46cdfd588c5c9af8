"""A/B two versions of the Triton kernel module in one process, on the same inputs (GPU).

    git show REV:src/sparsevdit/kernels/triton_sparse.py > /tmp/before.py
    PYTHONPATH=src python bench/probes/ab_kernel.py --before /tmp/before.py --cases wan14b:random:0.5,hunyuan:random:0.1

Run-to-run spread of a whole benchmark (cuDNN's baseline and ours move by a few %) hides changes of that
size; here both versions run the same config on the same q/k/v and index, interleaved ``--rounds`` times,
and the ratio of their medians is reported per case.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, patterns_at, shape_tensors  # noqa: E402
from sparsevdit.kernels import triton_sparse as current  # noqa: E402


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="path of the other triton_sparse.py")
    ap.add_argument("--cases", default="wan1.3b:random:0.1,wan14b:random:0.5,hunyuan:random:0.1")
    ap.add_argument("--config", default="M128N64w4s2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    before = load_module(args.before, "triton_sparse_before")
    from kernel_variants import parse_config

    cfg = parse_config(args.config)
    versions = {"before": before, "after": current}
    rows = []
    for case in args.cases.split(","):
        shape_name, kind, dens = case.split(":")
        shape = SHAPES[shape_name]
        d = shape.head_dim
        q, k, v = shape_tensors(shape)
        pats = patterns_at(kind, shape, float(dens))
        fns, outs = {}, {}
        for name, mod in versions.items():
            index = mod.block_index_for(pats, q.device)
            conf = mod.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)
            fns[name] = (lambda mod=mod, index=index, conf=conf:
                         mod.block_sparse_attention(q, k, v, index, 1 / math.sqrt(d), config=conf))
            outs[name] = fns[name]()[0]
        diff = float((outs["before"].float() - outs["after"].float()).abs().max())
        times = {name: [] for name in versions}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(median_ms(fn))
        med = {name: statistics.median(t) for name, t in times.items()}
        row = dict(case=case, config=args.config, before_ms=times["before"], after_ms=times["after"],
                   speedup=med["before"] / med["after"], max_abs_diff=diff)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, outs
        torch.cuda.empty_cache()
    if args.out:
        write_json(args.out, {**environment(), "benchmark": "kernel-ab", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
