"""Probe: FlashAttention-3's structure for our block lists, written in Gluon (Triton's explicit dialect).

    PYTHONPATH=src python bench/gluon_probe.py --compile-only          # any machine: builds for sm_90
    PYTHONPATH=src python bench/gluon_probe.py --shape 12x32768 --out $OUT/gluon-probe.json   # GPU

Why: our `tl` kernel runs dense rows at 0.91-0.93 of cuDNN, and Nsight Compute shows why (docs/kernel.md,
"What stands in the way"): two independent 128-row programs per SM, two warps per scheduler, the tensor
pipe busy 57% of the time against cuDNN's 68%. cuDNN and FlashAttention-3 run one CTA per SM with a
producer warp (TMA loads into a ring of shared buffers, mbarrier-signalled) and two consumer warpgroups
sharing each K/V tile. Triton 3.6's automatic `warp_specialize` builds that shape and measured slower;
Gluon (``triton.experimental.gluon``, in Triton 3.6) lets us write it by hand:

* one CTA = one query block of 128 rows of one head; the partitions of ``gl.warp_specialize``:
  two consumers of 64 rows each (4 warps, one warpgroup each: the default partition and a worker) and a
  loader (1 warp, 24 registers) that loads Q once and then K and V of each kept key block into a ring of
  ``STAGES`` buffers, ``k_ready`` / ``v_ready`` barriers per buffer (so the QK^T wgmma starts before V
  lands) and a ``kv_empty`` barrier both consumers arrive on;
* a consumer: S = Q K^T (async wgmma, Q and K from shared memory), online softmax in base 2 in the
  wgmma accumulator's registers, P converted to the A-operand register layout, O += P V (async wgmma,
  V from shared memory), then frees the buffer.

Status (2026-11-29, H200, ``bench/results/gluon-probe-h200.json``): exact on its first run (2.2e-3 against
float32 SDPA, dense and 30% lists) and **0.957 of cuDNN dense at 12 x 32,768** (our ``tl`` kernel: 0.93),
0.949 at 40 x 75,776; on random 10% lists 0.887 / 0.874 (our kernel 0.91): one CTA per SM fills and
drains its pipeline per query block, which a persistent loop over tiles would hide. One timed run each,
not rounds. The GPU mode checks it against SDPA on a small problem, then times it dense at ``--shape``
beside cuDNN, and on a random 10% block list.
Inputs here are contiguous [B*H*N, D] views with N a multiple of 128 (no partial blocks, no head maps).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

BLOCK = 128  # query rows per CTA (two consumers of 64) and keys per tile
HALF = 64


def _gluon():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia import hopper

    return gluon, gl, hopper


gluon, gl, hopper = _gluon()
mbarrier, tma = hopper.mbarrier, hopper.tma
# Two builds both called Triton 3.6.0 name the TMA load differently: the lent GPU's has
# async_copy_global_to_shared, the PyPI wheel async_load (and raises on the old name). The kernel calls
# tma.async_load; alias it where only the old name exists.
if not hasattr(tma, "async_load"):
    tma.async_load = tma.async_copy_global_to_shared


@gluon.constexpr_function
def _wgmma_layout(n):
    """Accumulator layout of a one-warpgroup wgmma with n columns (bf16 operands: k = 16)."""
    n = int(getattr(n, "value", n))
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _consume(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, row0, n_iter, qk_scale,
             HALF_IDX: gl.constexpr):
    # One consumer warpgroup: 64 query rows against every kept key tile of the CTA's list. Sizes come from
    # the buffers' types (constexpr arguments do not pass through warp_specialize's worker arguments).
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    mma: gl.constexpr = _wgmma_layout(BLOCK_N)
    acc_layout: gl.constexpr = _wgmma_layout(HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    rows: gl.constexpr = gl.SliceLayout(1, mma)
    acc_rows: gl.constexpr = gl.SliceLayout(1, acc_layout)

    q = q_smem.index(HALF_IDX)
    m_i = gl.full([64], float("-inf"), gl.float32, rows)
    l_i = gl.full([64], 0.0, gl.float32, rows)
    acc = gl.zeros([64, HEAD_DIM], gl.float32, acc_layout)
    s_zero = gl.zeros([64, BLOCK_N], gl.float32, mma)
    mbarrier.wait(q_bar, 0)
    for j in range(n_iter):
        slot = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        s = hopper.warpgroup_mma(q, k_bufs.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = hopper.warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, acc_rows), 1)
        p16 = gl.convert_layout(p.to(gl.bfloat16), p_layout)
        mbarrier.wait(v_ready.index(slot), phase)
        acc = hopper.warpgroup_mma(p16, v_bufs.index(slot), acc, is_async=True)
        acc = hopper.warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(slot), count=1)
        m_i = m_new
    l_safe = gl.where(l_i == 0.0, 1.0, l_i)
    out = acc / gl.expand_dims(gl.convert_layout(l_safe, acc_rows), 1)
    offs_m = row0 + HALF_IDX * 64 + gl.arange(0, 64, layout=acc_rows)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
    ptrs = O + gl.expand_dims(offs_m.to(gl.int64) * HEAD_DIM, 1) + gl.expand_dims(offs_d, 0)
    gl.store(ptrs, out.to(O.dtype.element_ty))


@gluon.jit
def _load(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, idx_ptr, row0,
          kv_row0, n_iter):
    # The producer warp: Q once (both halves on one barrier), then K and V of each listed key block.
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_load(q_desc, [row0, 0], q_bar, q_smem.index(0))
    tma.async_load(q_desc, [row0 + 64, 0], q_bar, q_smem.index(1))
    for j in range(n_iter):
        slot = j % STAGES
        phase = (j // STAGES) & 1
        start = kv_row0 + gl.load(idx_ptr + j) * BLOCK_N
        mbarrier.wait(kv_empty.index(slot), phase ^ 1)  # barriers start as if phase 1 completed
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        tma.async_load(k_desc, [start, 0], k_ready.index(slot), k_bufs.index(slot))
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        tma.async_load(v_desc, [start, 0], v_ready.index(slot), v_bufs.index(slot))


@gluon.jit
def _second_consumer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, idx_ptr,
                     row0, kv_row0, n_iter, qk_scale):
    # Worker partitions share one signature (this and _loader_partition).
    _consume(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, row0, n_iter, qk_scale, 1)


@gluon.jit
def _loader_partition(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, idx_ptr,
                      row0, kv_row0, n_iter, qk_scale):
    _load(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, idx_ptr, row0,
          kv_row0, n_iter)


@gluon.jit
def _first_consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, row0, n_iter, qk_scale):
    _consume(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, row0, n_iter, qk_scale, 0)


@gluon.jit
def block_attention_fwd(q_desc, k_desc, v_desc, O, KV_IDX, KV_CNT, N, NQB, MAXW, qk_scale,
                        HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    item = gl.program_id(0)  # head * NQB + query block
    head = item // NQB
    n_iter = gl.load(KV_CNT + item)
    idx_ptr = KV_IDX + item.to(gl.int64) * MAXW
    row0 = head * N + (item % NQB) * 128
    kv_row0 = head * N

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, 64, HEAD_DIM], q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)  # both consumers release a buffer

    common = (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, idx_ptr, row0,
              kv_row0, n_iter, qk_scale)
    gl.warp_specialize([
        (_first_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, O, row0, n_iter, qk_scale)),
        (_second_consumer, common),
        (_loader_partition, common),
    ], [4, 1], [232, 24])


def descriptors(q, k, v, block_n: int):
    """Gluon TMA descriptors over [B*H*N, D] views (64-row Q tiles, block_n-row K/V tiles)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    d = q.shape[-1]
    flat = [t.reshape(-1, d) for t in (q, k, v)]
    lay_q = gl.NVMMASharedLayout.get_default_for([HALF, d], gl.bfloat16)
    lay_kv = gl.NVMMASharedLayout.get_default_for([block_n, d], gl.bfloat16)
    return (TensorDescriptor.from_tensor(flat[0], [HALF, d], lay_q),
            TensorDescriptor.from_tensor(flat[1], [block_n, d], lay_kv),
            TensorDescriptor.from_tensor(flat[2], [block_n, d], lay_kv))


def run(q, k, v, kv_idx, kv_cnt, stages: int = 2):
    """q, k, v [1, H, N, D] bf16 contiguous, N a multiple of 128; kv_idx [H, N/128, W] int32 ascending key
    blocks per query block, kv_cnt [H, N/128]."""
    import triton

    _, h, n, d = q.shape
    out = torch.empty_like(q)
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=q.device))
    block_attention_fwd[(h * (n // BLOCK),)](
        *descriptors(q, k, v, BLOCK), out, kv_idx, kv_cnt, n, n // BLOCK, kv_idx.shape[-1],
        d ** -0.5 * 1.4426950408889634, HEAD_DIM=d, BLOCK_N=BLOCK, STAGES=stages, num_warps=4, maxnreg=168)
    return out


def compile_only(stages: int) -> dict:
    """Build for sm_90 without a GPU and report what ptxas made of it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    q = torch.zeros(1, 2, 256, 128, dtype=torch.bfloat16)
    descs = descriptors(q, q, q, BLOCK)
    sig = {"q_desc": descs[0].__mangle__(), "k_desc": descs[1].__mangle__(), "v_desc": descs[2].__mangle__(),
           "O": "*bf16", "KV_IDX": "*i32", "KV_CNT": "*i32", "N": "i32", "NQB": "i32", "MAXW": "i32",
           "qk_scale": "fp32", "HEAD_DIM": "constexpr", "BLOCK_N": "constexpr", "STAGES": "constexpr"}
    src = GluonASTSource(block_attention_fwd, sig, constexprs={"HEAD_DIM": 128, "BLOCK_N": BLOCK, "STAGES": stages})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 128), options={"num_warps": 4, "maxnreg": 168})
    from compile_check import cubin_resources

    ptx = kernel.asm["ptx"]
    return {"stages": stages, "shared_bytes": kernel.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"),
            "setmaxnreg": ptx.count("setmaxnreg"), "mbarrier_waits": ptx.count("mbarrier.try_wait"),
            **cubin_resources(kernel.asm["cubin"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true", help="build for sm_90 here, no GPU needed")
    ap.add_argument("--stages", default="2", help="comma list of K/V ring depths")
    ap.add_argument("--shape", default="12x32768", help="heads x tokens (B=1, D=128, tokens a multiple of 128)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stages = [int(s) for s in args.stages.split(",")]
    if args.compile_only:
        rows = [compile_only(s) for s in stages]
        for row in rows:
            print(json.dumps(row))
        return 0
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def lists(h, nb, density, seed=0):
        gen = torch.Generator().manual_seed(seed)
        mask = torch.rand(h, nb, nb, generator=gen) < density
        mask[..., 0] = True
        cnt = mask.sum(-1).to(torch.int32)
        idx = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        return mask, idx.cuda(), cnt.cuda()

    rows = []

    def save(rows):  # after every row: a hang or a crash later keeps what was measured
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"command": " ".join(["python", *sys.argv]), "gpu": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__, "rows": rows}, f, indent=1)

    # correctness on a small problem, every list shape: dense and 30%
    for density in (1.0, 0.3):
        h, n = 2, 1024
        q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask, idx, cnt = lists(h, n // BLOCK, density)
        tok = mask.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2).cuda()
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=tok[None])
        for st in stages:
            err = float((run(q, k, v, idx, cnt, st).float() - ref).norm() / ref.norm())
            rows.append({"check": f"{h}x{n} density {density}", "stages": st, "rel_err": err})
            save(rows)
    h, n = (int(x) for x in args.shape.split("x"))
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                           return_mode="median")
    for density in (1.0, 0.1):
        mask, idx, cnt = lists(h, n // BLOCK, density)
        dens = float(mask.float().mean())
        for st in stages:
            ms = triton.testing.do_bench(lambda: run(q, k, v, idx, cnt, st), return_mode="median")
            rows.append({"shape": [1, h, n, 128], "density": dens, "stages": st, "ms": ms, "cudnn_dense_ms": cudnn_ms,
                         "efficiency": cudnn_ms * dens / ms})
            save(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
