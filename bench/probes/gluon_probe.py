"""The Gluon kernel (backend ``gluon``, kernels/gluon_kernel.py) beside cuDNN: exactness, then speed (GPU).

    PYTHONPATH=src python bench/probes/gluon_probe.py --compile-only           # any machine: builds for sm_90
    PYTHONPATH=src python bench/probes/gluon_probe.py --shape 12x32768 --grids tile,persistent --out $OUT/gluon-probe.json

FlashAttention-3's structure over our block lists: a loader warp and two consumer warpgroups sharing K/V
(docs/kernel.md, "The way past it"). ``--grids``: ``tile`` launches one CTA per query tile (the first
probe's form), ``persistent`` one CTA per SM walking the tiles longest-list-first (the library default).
The GPU mode checks both against float32 SDPA on a small problem (dense and 30% lists, a partial last
block), then times them dense and on random 10% lists at ``--shape`` beside cuDNN.

History: the figures in ``bench/results/gluon-probe-h200.json`` (2026-11-29: 0.957 / 0.949 of cuDNN dense)
came from this script's own kernel at commit c4f7bcd, the ``tile`` form without the partial-block mask
and the lse store; that kernel became kernels/gluon_kernel.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def compile_only(stages: int) -> list[dict]:
    """Build for sm_90 without a GPU and report what ptxas made of it."""
    from compile_check import cubin_resources

    from sparsevdit.kernels import gluon_kernel

    rows = []
    for head_dim in (128, 64):
        kernel = gluon_kernel.compile_for_sm90(head_dim, "bf16", stages)
        ptx = kernel.asm["ptx"]
        rows.append({"head_dim": head_dim, "stages": stages, "shared_bytes": kernel.metadata.shared,
                     "wgmma": ptx.count("wgmma.mma_async"), "setmaxnreg": ptx.count("setmaxnreg"),
                     **cubin_resources(kernel.asm["cubin"])})
    return rows


def kernel_module(spec: str):
    """``LABEL=PATH``: (label, the module loaded from PATH), a stand-in for kernels/gluon_kernel.py."""
    import importlib.util

    label, _, path = spec.partition("=")
    if not label or not os.path.isfile(path):
        raise SystemExit(f"--kernel-file wants LABEL=PATH of an existing file, got {spec!r}")
    module_spec = importlib.util.spec_from_file_location(f"gluon_kernel_{label}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return label, module


@contextlib.contextmanager
def kernel_swapped(module):
    """Run the backend with ``module`` as its kernel file (None: the library's own)."""
    import sparsevdit.kernels as package
    from sparsevdit.kernels import gluon_kernel

    if module is not None:
        package.gluon_kernel = module
    try:
        yield
    finally:
        package.gluon_kernel = gluon_kernel


def random_index(heads: int, n: int, density: float, seed: int = 0):
    """Random 128-block lists (block 0 always kept): the mask and its BlockIndex on the GPU."""
    nb = -(-n // 128)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(heads, nb, nb, generator=gen) < density
    mask[..., 0] = True
    counts = mask.sum(-1).to(torch.int32)
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return mask, ts.index_from_tensors(order.cuda(), counts.cuda(), 128, n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true", help="build for sm_90 here, no GPU needed")
    ap.add_argument("--stages", default="2", help="comma list of K/V ring depths")
    ap.add_argument("--grids", default="tile,persistent", help="comma list of tile, persistent")
    ap.add_argument("--shape", default="12x32768", help="heads x tokens of the timed problem (B=1, D=128)")
    ap.add_argument("--kernel-file", action="append", default=[], metavar="LABEL=PATH",
                    help="also time another version of kernels/gluon_kernel.py (an A/B in one process)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stages = [int(s) for s in args.stages.split(",")]
    if args.compile_only:
        for st in stages:
            for row in compile_only(st):
                print(json.dumps(row))
        return 0
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsevdit.kernels.gluon_backend import gluon_block_sparse_attention

    kernels = {"lib": None, **dict(kernel_module(spec) for spec in args.kernel_file)}
    variants = [(g, st, name) for name in kernels for g in args.grids.split(",") for st in stages]
    rows = []

    def save(row):  # after every row: a hang or a crash later keeps what was measured
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"command": " ".join(["python", *sys.argv]), "gpu": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__, "rows": rows}, f, indent=1)

    def run(q, k, v, index, grid, st, name):
        with kernel_swapped(kernels[name]):
            return gluon_block_sparse_attention(q, k, v, index, return_lse=True, stages=st,
                                                persistent=grid == "persistent")

    for density in (1.0, 0.3):  # exactness: 2 x 3 heads x 1000 tokens (a partial last block)
        h, n = 3, 1000
        q, k, v = (torch.randn(2, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask, index = random_index(h, n, density)
        tok = mask.repeat_interleave(128, 1).repeat_interleave(128, 2)[:, :n, :n].cuda()
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=tok[None])
        for grid, st, name in variants:
            out, _ = run(q, k, v, index, grid, st, name)
            save({"check": f"2x{h}x{n} density {density}", "kernel": name, "grid": grid, "stages": st,
                  "rel_err": float((out.float() - ref).norm() / ref.norm())})
    h, n = (int(x) for x in args.shape.split("x"))
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                           return_mode="median")
    for density in (1.0, 0.1):
        mask, index = random_index(h, n, density)
        dens = float(mask.float().mean())
        for grid, st, name in variants:
            ms = triton.testing.do_bench(lambda: run(q, k, v, index, grid, st, name), return_mode="median")
            save({"shape": [1, h, n, 128], "density": dens, "kernel": name, "grid": grid, "stages": st, "ms": ms,
                  "cudnn_dense_ms": cudnn_ms, "efficiency": cudnn_ms * dens / ms})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
