"""GPU: what a dynamic method's selection costs per layer at full-size shapes, beside the attention it
selects for (same q, k, v, same run): topk (fraction, and tau) and svg's probe, vs our kernel on the
selection and cuDNN dense. Random q, k, v in bf16 (the cost does not depend on the values).

    PYTHONPATH=src python bench/selection_cost.py --out selection-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from sparsevdit.bench.common import environment, median_ms
from sparsevdit.layout import TokenLayout

SHAPES = {  # heads, head_dim, layout, layers (the e2e models)
    "wan1.3b": (12, 128, TokenLayout(21, 30, 52), 30),
    "cogvideox1.5": (48, 64, TokenLayout(11, 48, 85, 226, "prefix"), 42),
    "wan14b": (40, 128, TokenLayout(21, 45, 80), 40),
    "hunyuan720p": (24, 128, TokenLayout(33, 45, 80, 256, "suffix"), 60),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default="out/bench/selection-cost.json")
    args = ap.parse_args(argv)
    from sparsevdit import sparse_attention
    from sparsevdit.bench.kernels import cudnn_dense
    from sparsevdit.methods import parse_params
    from sparsevdit.methods.svg import SVG
    from sparsevdit.methods.topk import select
    from sparsevdit.patterns import BlockSelection

    rows = []
    for name in args.shapes.split(","):
        h, d, layout, layers = SHAPES[name]
        family = "wan" if name.startswith("wan") else "hunyuan"
        n = layout.num_tokens
        q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        dense = median_ms(lambda: cudnn_dense(q, k, v))
        row = {"shape": name, "heads": h, "tokens": n, "head_dim": d, "layers": layers, "cudnn_dense_ms": dense}
        for label, params in (("topk fraction=0.1", {"tau": None, "fraction": 0.1}), ("topk tau=0.9", {"tau": 0.9})):
            p = parse_params("topk", params)
            sel_ms = median_ms(lambda: select(q, k, layout, 128, p))
            counts, indices = select(q, k, layout, 128, p)
            sel = BlockSelection(layout, 128, counts, indices)
            attn_ms = median_ms(lambda: sparse_attention(q, k, v, sel, layout=layout, backend="triton"))
            row[label] = {"select_ms": sel_ms, "attention_ms": attn_ms, "density": sel.density,
                          "select_share_of_layer": sel_ms / (sel_ms + attn_ms)}
            print(f"{name:13s} {label:18s} select {sel_ms:7.3f} ms  attention {attn_ms:7.3f} ms  "
                  f"density {sel.density:5.1%}  (cuDNN dense {dense:.2f} ms)", flush=True)
        p = parse_params("svg", {"sparsity": 0.1, "model_family": family})
        times = []
        for step in range(5):
            torch.cuda.synchronize()
            t0 = torch.cuda.Event(enable_timing=True)
            t1 = torch.cuda.Event(enable_timing=True)
            t0.record()
            pats = SVG.select(q, k, layout, 128, p, v=v, layer=0, step=step)
            t1.record()
            t1.synchronize()
            times.append(t0.elapsed_time(t1))
        attn_ms = median_ms(lambda: sparse_attention(q, k, v, pats, layout=layout, backend="triton"))
        row["svg sparsity=0.1"] = {"select_ms": statistics.median(times[1:]), "attention_ms": attn_ms,
                                   "density": sum(x.density for x in pats) / len(pats)}
        print(f"{name:13s} svg sparsity=0.1   select {row['svg sparsity=0.1']['select_ms']:7.3f} ms  attention {attn_ms:7.3f} ms",
              flush=True)
        rows.append(row)
        del q, k, v
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump({**environment(), "rows": rows}, fh, indent=1)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
