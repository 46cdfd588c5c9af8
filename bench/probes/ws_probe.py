"""Probe Triton 3.6 warp specialisation on Hopper with minimal flash-attention loops (GPU).

    PYTHONPATH=src python bench/probes/ws_probe.py --out $OUT/ws-probe.json

Our block-sparse kernel with ``warp_specialize=True`` (4 warps) compiled once O was stored by pointer,
but hung on the H100 (2026-11-23). This isolates why: each variant is one key loop of the same
flash-attention step, differing in where the key block's offset comes from:

* ``affine``: ``j * BLOCK_N`` (a dense loop, like the leads' dense kernel);
* ``loaded``: ``tl.load(IDX + j) * BLOCK_N`` (our kernel: a scalar load in the loop feeds the TMA coordinate);
* ``select``: the index list loaded once as a vector before the loop, element j picked by a masked sum.

and in where the TMA descriptors are built (``host``: ``TensorDescriptor`` on the host, as in the first
run, where every specialised variant hung; ``device``: ``tl.make_tensor_descriptor`` in the kernel, which
Triton's Hopper warp specialisation is said to need). Each variant runs in its own process under a timeout
(a hung kernel is a result): correctness against SDPA on a small shape, then time at 1 x 12 x 32,768 x 128
dense against cuDNN in the same process. Case syntax: ``mode:ws(0/1):block_n:stages[:host|device]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("affine", "loaded", "select")


def run_variant(mode: str, ws: bool, block_n: int, stages: int, desc: str = "host", heads: int = 12,
                tokens: int = 32768) -> dict:
    import torch
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    @triton.jit
    def fwd(Qd, Kd, Vd, O, IDX, N, NB, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, MODE: tl.constexpr, WS: tl.constexpr, NB_P2: tl.constexpr,
            DEVICE_DESC: tl.constexpr, ROWS: tl.constexpr):
        pid = tl.program_id(0)
        h = tl.program_id(1)
        if DEVICE_DESC:  # Qd/Kd/Vd are plain pointers to [ROWS, HEAD_DIM] row-major storage here
            Qd = tl.make_tensor_descriptor(Qd, shape=[ROWS, HEAD_DIM], strides=[HEAD_DIM, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
            Kd = tl.make_tensor_descriptor(Kd, shape=[ROWS, HEAD_DIM], strides=[HEAD_DIM, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
            Vd = tl.make_tensor_descriptor(Vd, shape=[ROWS, HEAD_DIM], strides=[HEAD_DIM, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        start_m = pid * BLOCK_M
        q = Qd.load([h * N + start_m, 0])
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if MODE == 2:
            ar = tl.arange(0, NB_P2)
            lst = tl.load(IDX + ar, mask=ar < NB, other=0)
        for j in tl.range(0, NB, warp_specialize=WS):
            if MODE == 0:
                start_n = j * BLOCK_N
            elif MODE == 1:
                start_n = tl.load(IDX + j) * BLOCK_N
            else:
                start_n = tl.sum(tl.where(ar == j, lst, 0)) * BLOCK_N
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k = Kd.load([h * N + start_n, 0])
            v = Vd.load([h * N + start_n, 0])
            qk = tl.dot(q, tl.trans(k))
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
            corr = tl.math.exp2(m_i - m_ij)
            l_i = l_i * corr + tl.sum(p, 1)
            acc = acc * corr[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_ij
        out = (acc / l_i[:, None]).to(O.dtype.element_ty)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        tl.store(O + (h * N + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], out)

    def attn(q, k, v):
        _, h, n, d = q.shape
        nb = n // block_n
        idx = torch.arange(nb, dtype=torch.int32, device="cuda")
        o = torch.empty_like(q)
        if desc == "host":
            descs = [TensorDescriptor.from_tensor(t.view(h * n, d), [bm, d])
                     for t, bm in ((q, 128), (k, block_n), (v, block_n))]
        else:
            descs = [q, k, v]
        fwd[(n // 128, h)](*descs, o, idx, n, nb, d ** -0.5 * 1.4426950408889634, HEAD_DIM=d, BLOCK_M=128,
                           BLOCK_N=block_n, MODE=VARIANTS.index(mode), WS=ws, NB_P2=triton.next_power_of_2(nb),
                           DEVICE_DESC=desc == "device", ROWS=h * n, num_warps=4, num_stages=stages)
        return o

    if desc == "device":
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    torch.manual_seed(0)
    row = {"mode": mode, "warp_specialize": ws, "block_n": block_n, "stages": stages, "descriptors": desc,
           "shape": [1, heads, tokens, 128]}
    q, k, v = (torch.randn(1, 2, 2048, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    row["small_err"] = float((attn(q, k, v).float() - ref.float()).norm() / ref.float().norm())
    torch.cuda.synchronize()
    q, k, v = (torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        row["cudnn_ms"] = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                                  return_mode="median")
    row["ms"] = triton.testing.do_bench(lambda: attn(q, k, v), return_mode="median")
    row["efficiency"] = row["cudnn_ms"] / row["ms"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="affine:1:128:2:device,loaded:1:64:2:device,affine:0:64:2:device,affine:1:128:2",
                    help="mode:warp_specialize(0/1):block_n:stages[:host|device], comma separated")
    ap.add_argument("--shape", default="12x32768", help="heads x tokens of the timed problem (B=1, D=128; "
                    "tokens a multiple of 128); the leads' dense kernel reached 0.99 of cuDNN at 24x65536")
    ap.add_argument("--timeout", type=float, default=40.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        mode, ws, bn, st, *desc = args.one.split(":")
        heads, tokens = (int(x) for x in args.shape.split("x"))
        print(json.dumps(run_variant(mode, ws == "1", int(bn), int(st), *desc, heads=heads, tokens=tokens)))
        return 0
    rows = []
    for case in args.cases.split(","):
        try:
            done = subprocess.run([sys.executable, __file__, "--one", case, "--shape", args.shape], capture_output=True, text=True,
                                  timeout=args.timeout)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"case": case, "error": done.stderr.strip()[-300:]}
        except subprocess.TimeoutExpired:
            row = {"case": case, "error": f"no result within {args.timeout:g} s (hung)"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(["python", *sys.argv]), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
