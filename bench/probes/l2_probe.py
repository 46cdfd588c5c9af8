"""Does L2 reuse of K/V limit our kernel at long sequences? A timing probe (GPU).

    PYTHONPATH=src python bench/probes/l2_probe.py --shapes hunyuan,wan14b --out $OUT/l2-probe.json

docs/kernel.md's hypothesis: at HunyuanVideo one head's K+V (61 MB) does not fit the H100's 50 MB L2,
so random block masks there (0.84 of cuDNN's rate at 10%) lose to HBM traffic. Each row times the
kernel on the same q/k/v with index lists of the same length per query block, differing only in which
key blocks they may pick:

* ``full``: random over all key blocks (the benchmark's random mask);
* ``window:W``: random over the first fraction W of the key blocks (a head's working set shrinks to W);
* ``split:S``: the full mask's lists cut into S contiguous key ranges, one launch per range, all S
  launches timed as one call (what a key-chunked two-pass kernel would cost, without its merge).

If ``window`` rows are faster per kept block than ``full``, and ``split`` beats ``full``, the working
set is the limit and a key-chunked launch order pays.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, cudnn_dense, shape_tensors  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def random_lists(heads: int, nq: int, nk: int, keep: int, span: int, seed: int) -> torch.Tensor:
    """int64 [heads, nq, keep]: sorted random key blocks drawn from the first ``span`` blocks."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(heads, nq, span, generator=gen)
    return scores.topk(keep, dim=-1).indices.sort(dim=-1).values


def index_of(lists: list[list[torch.Tensor]], n: int, bs: int, device) -> ts.BlockIndex:
    """BlockIndex from per-head, per-query-block 1-D tensors of key blocks (ragged)."""
    heads, nq = len(lists), len(lists[0])
    width = max(1, max(int(row.numel()) for hl in lists for row in hl))
    idx = torch.zeros(heads, nq, width, dtype=torch.int32)
    cnt = torch.zeros(heads, nq, dtype=torch.int32)
    for h, hl in enumerate(lists):
        for i, row in enumerate(hl):
            idx[h, i, : row.numel()] = row.to(torch.int32)
            cnt[h, i] = row.numel()
    return ts.index_from_tensors(idx.to(device), cnt.to(device), bs, n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="hunyuan,wan14b")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--windows", default="0.25,0.5")
    ap.add_argument("--splits", default="2,3")
    ap.add_argument("--config", default="M128N64w4s2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from kernel_variants import parse_config

    cfg = parse_config(args.config)
    conf = ts.KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)
    rows = []
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        n, h, d, bs = shape.layout.num_tokens, shape.heads, shape.head_dim, 128
        nb = -(-n // bs)
        keep = max(1, round(args.density * nb))
        q, k, v = shape_tensors(shape)
        cudnn_ms = median_ms(lambda: cudnn_dense(q, k, v))
        per_block_dense = cudnn_ms / (h * nb * nb)  # cuDNN ms per (head, query block, key block)

        def timed(name: str, launches: list[ts.BlockIndex]) -> None:
            def fn():
                for ix in launches:
                    ts.block_sparse_attention(q, k, v, ix, 1 / math.sqrt(d), config=conf, return_lse=len(launches) > 1)
            fn()
            torch.cuda.synchronize()
            ms = median_ms(fn)
            kept = sum(int(ix._counts_cpu.sum()) for ix in launches)
            row = dict(shape=shape_name, case=name, launches=len(launches), kept_blocks=kept, ms=ms,
                       efficiency=per_block_dense * kept / ms, cudnn_dense_ms=cudnn_ms)
            rows.append(row)
            print(json.dumps(row), flush=True)

        full = random_lists(h, nb, nb, keep, nb, seed=1)
        timed("full", [index_of([list(full[i]) for i in range(h)], n, bs, q.device)])
        for w in (float(x) for x in args.windows.split(",") if x):
            span = max(keep, round(w * nb))
            lists = random_lists(h, nb, nb, keep, span, seed=2)
            timed(f"window:{w:g}", [index_of([list(lists[i]) for i in range(h)], n, bs, q.device)])
        for s in (int(x) for x in args.splits.split(",") if x):
            edges = [round(nb * j / s) for j in range(s + 1)]
            parts = []
            for j in range(s):
                lo, hi = edges[j], edges[j + 1]
                parts.append(index_of([[row[(row >= lo) & (row < hi)] for row in full[i]] for i in range(h)], n, bs, q.device))
            timed(f"split:{s}", parts)
        dense_lists = torch.arange(nb).expand(h, nb, nb)
        timed("dense", [index_of([list(dense_lists[i]) for i in range(h)], n, bs, q.device)])
        edges = [0, nb // 2, nb]
        timed("dense split:2", [index_of([[row[(row >= lo) & (row < hi)] for row in dense_lists[i]] for i in range(h)],
                                         n, bs, q.device) for lo, hi in zip(edges, edges[1:])])
        del q, k, v
        torch.cuda.empty_cache()
    if args.out:
        write_json(args.out, {**environment(), "benchmark": "l2-probe", "config": args.config, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
