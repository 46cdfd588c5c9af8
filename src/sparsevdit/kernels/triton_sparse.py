"""Block-sparse flash-attention forward in Triton, tuned for Hopper (H100).

Each program computes one query tile (``BLOCK_M`` rows of one query block of one (batch, head))
and walks that head's list of kept key blocks for the query block: no mask tensor, no work for
skipped blocks. All heads of a call share one launch (head fusion), each with its own index list.

Two code paths, chosen by the constexpr ``USE_DESC``:

* Hopper (sm_90+, CUDA): K/V/Q/O through tensor descriptors (TMA), the key loop under
  ``tl.range(..., warp_specialize=...)``; block shapes, warps and stages autotuned per head_dim.
* Fallback: plain pointer loads with bounds masks; runs under ``TRITON_INTERPRET=1`` on the CPU
  and on CUDA GPUs without TMA.

Launch order: query blocks are scheduled longest-list-first (``schedule="head"``: head by head,
longest first inside each head, so the K/V of one head stay hot in L2 while its tiles run;
``"lpt"``: longest first across all heads). A partial last key block is always the last entry of
an ascending list, so the key loop runs unmasked over the full blocks and one masked step at the end.

Optional logit transform keyed on token distance (``distance_window``/``alpha``): for
``|q_idx - k_idx| > window`` and a positive logit, the logit is multiplied by ``alpha``. It is a
constexpr flag: off, the kernel carries no extra instruction.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import torch

from ..caches import BoundedCache, clear_with_the_others

# Triton is optional, and imported only at the first launch: ``triton.jit`` (Triton's own library
# functions too) picks compiled or interpreted code at import, from TRITON_INTERPRET, so importing
# sparsevdit must not fix that choice before a test sets the variable.
HAS_TRITON = importlib.util.find_spec("triton") is not None
triton = None  # bound by _load_triton()
tl = None
_KERNEL_FNS: dict = {}


def _kernel_fn(fn):
    """Mark a module-level function as Triton code; _load_triton() rebinds its name to triton.jit(fn)."""
    _KERNEL_FNS[fn.__name__] = fn
    return fn


def _load_triton() -> None:
    """Import triton and jit the kernel functions in the mode in force now (compiled or interpreted)."""
    global triton, tl, _KERNEL_INTERPRETED
    interp = interpret_mode()
    if triton is not None and _KERNEL_INTERPRETED == interp:
        return
    import triton as _triton
    import triton.language as _tl

    triton, tl = _triton, _tl
    g = globals()
    for name, fn in _KERNEL_FNS.items():  # helpers first: the kernel body finds them by global name
        g[name] = triton.jit(fn)
    _KERNEL_INTERPRETED = interp
    _AUTOTUNED.clear()

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCK_SIZES = (64, 128)


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def hopper_features(device: torch.device) -> bool:
    """TMA tensor descriptors + warp specialisation: CUDA sm_90 or newer, not in the interpreter."""
    if device.type != "cuda" or interpret_mode() or not HAS_TRITON:
        return False
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    _load_triton()
    return hasattr(tl, "make_tensor_descriptor")


# ----------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------
@_kernel_fn
def _tile_step(acc, l_i, m_i, q, k, v, offs_m, start_n, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
               BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, USE_DIST: tl.constexpr, DOT_F32: tl.constexpr,
               LAZY_RESCALE: tl.constexpr = False):
    if DOT_F32:  # interpreter: its dot multiplies bf16 as raw uint16 bits, so upcast first
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    else:
        qk = tl.dot(q, tl.trans(k))
    if USE_DIST or MASK_N:
        offs_n = start_n + tl.arange(0, BLOCK_N)
    if USE_DIST:
        # only pairs of tokens in [d_lo, d_hi) (the video) are far or near; rows below bar_hi are barred
        # from far keys (-inf), the others have far positive logits scaled by alpha
        dist = offs_m[:, None] - offs_n[None, :]
        inside = ((offs_m[:, None] >= d_lo) & (offs_m[:, None] < d_hi)
                  & (offs_n[None, :] >= d_lo) & (offs_n[None, :] < d_hi))
        far = ((dist > window) | (dist < -window)) & inside
        qk = tl.where(far & (qk > 0), qk * alpha, qk)
        qk = tl.where(far & (offs_m[:, None] < bar_hi), float("-inf"), qk)
    if MASK_N:
        qk = tl.where(offs_n[None, :] < N, qk, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if LAZY_RESCALE:
        # Keep a stale running max (p <= 2^8 then, exact after the final division) and rescale
        # acc/l only when some row's max grew past that: after the first tiles of a row almost never, which
        # saves the acc multiply (BLOCK_M x HEAD_DIM per tile). One block-wide reduction decides.
        if tl.max((m_ij > m_i + 8.0).to(tl.int32), 0) > 0:
            corr = tl.math.exp2(m_i - m_ij)
            l_i = l_i * corr
            acc = acc * corr[:, None]
            m_i = m_ij
        m_ij = m_i
        m_sub = m_ij
        if USE_DIST:  # a row barred from every key so far: subtract 0, not -inf (-inf - -inf is NaN)
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        l_i = l_i + tl.sum(p, 1)
    else:
        m_sub = m_ij
        if USE_DIST:  # as above
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        corr = tl.math.exp2(m_i - m_sub)
        l_i = l_i * corr + tl.sum(p, 1)
        acc = acc * corr[:, None]
    if DOT_F32:
        acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_ij

@_kernel_fn
def _key_loop(acc, l_i, m_i, q, K, desc_k, desc_v, V, k_base, v_base, stride_kn, stride_vn, b, hk,
              idx_ptr, lo, hi, offs_m, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
              HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK_N: tl.constexpr, USE_DIST: tl.constexpr, USE_DESC: tl.constexpr,
              WARP_SPEC: tl.constexpr, DOT_F32: tl.constexpr, HOST_DESC: tl.constexpr = True,
              LAZY_RESCALE: tl.constexpr = False):
    KSUB: tl.constexpr = BLOCK // BLOCK_N
    offs_d = tl.arange(0, HEAD_DIM)
    for j in tl.range(lo, hi, warp_specialize=WARP_SPEC):
        if KSUB == 1:
            start_n = tl.load(idx_ptr + j) * BLOCK
        else:
            start_n = tl.load(idx_ptr + j // KSUB) * BLOCK + (j % KSUB) * BLOCK_N
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if USE_DESC:
            if HOST_DESC:  # 4-D descriptors [B, h, N, D] over the tensors' own strides
                k = desc_k.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
                v = desc_v.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            else:  # 2-D descriptors [N, D] of this program's (batch, head)
                k = desc_k.load([start_n, 0])
                v = desc_v.load([start_n, 0])
        else:
            offs_n = (start_n + tl.arange(0, BLOCK_N)).to(tl.int64)
            k_ptrs = K + k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
            v_ptrs = V + v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
            if MASK_N:
                k = tl.load(k_ptrs, mask=offs_n[:, None] < N, other=0.0)
                v = tl.load(v_ptrs, mask=offs_n[:, None] < N, other=0.0)
            else:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
        acc, l_i, m_i = _tile_step(acc, l_i, m_i, q, k, v, offs_m, start_n, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
                                   BLOCK_N, MASK_N, USE_DIST, DOT_F32, LAZY_RESCALE)
    return acc, l_i, m_i

@_kernel_fn
def _load_rows(desc, ptrs, row_ok, b, h, start_m, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
               BY_DESC: tl.constexpr, HOST_DESC: tl.constexpr):
    # One query tile's rows of Q or O: through the 4-D host descriptor, the 2-D in-kernel one, or the
    # pointers (permuted rows, no TMA).
    if BY_DESC:
        if HOST_DESC:
            tile = desc.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        else:
            tile = desc.load([start_m, 0])
    else:
        tile = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    return tile

@_kernel_fn
def _attend_tile(
    pid,
    Q, K, V, O, Qd, Kd, Vd, Od, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, PERM,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    qk_scale, window, alpha, d_lo, d_hi, bar_hi,
    N, NREC, B, NQB, MAXW, H_QO, H_KV,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, USE_DIST: tl.constexpr, STORE_LSE: tl.constexpr,
    USE_DESC: tl.constexpr, WARP_SPEC: tl.constexpr, HOST_DESC: tl.constexpr = True,
    DOT_F32: tl.constexpr = False, PERMUTED: tl.constexpr = False, ONE_LOOP: tl.constexpr = False,
    HEAD_MAP: tl.constexpr = True, PERSISTENT: tl.constexpr = False, CHUNKED: tl.constexpr = False,
    LAZY_RESCALE: tl.constexpr = False,
):
    # One query tile: program ``pid`` of the launch order (several per program when PERSISTENT).
    # Q/O (and LSE) are [B, H_QO, N, D] with any strides: the call's head i is head HMAP_QO[i] there;
    # K/V are [B, H_KV, N, D] likewise through HMAP_KV (both identity when HEAD_MAP is off).
    # PERMUTED: the index lists are over a reordered sequence whose position j is token PERM[j] of Q/O
    # (K/V come already reordered), so Q rows are gathered and O rows scattered by pointer in the
    # prologue/epilogue, once per tile.
    QSUB: tl.constexpr = BLOCK // BLOCK_M
    KSUB: tl.constexpr = BLOCK // BLOCK_N
    # Warp specialisation (Triton 3.6, Hopper) needs descriptors made in the kernel (with host-built ones
    # the specialised kernel hangs: docs/kernel.md) and Q through a descriptor (its pass fails on the
    # pointer gather of permuted Q rows): otherwise the same config runs unspecialised.
    WS: tl.constexpr = WARP_SPEC and USE_DESC and not HOST_DESC and not PERMUTED
    qsub = pid % QSUB
    rest = pid // QSUB
    b = rest % B
    # Launch record (item = head * NQB + query block, its list length, whether the list ends with the
    # partial last block): three independent loads of one line, so the key loop's first index and the
    # head map wait on one memory round trip, not a chain of three (schedule -> count -> last entry).
    rec = SCHED + (rest // B) * 4
    item = tl.load(rec)
    cnt = tl.load(rec + 1)
    flags = tl.load(rec + 2)
    has_tail = (flags & 1) != 0  # REC_TAIL
    head = item // NQB
    qb = item % NQB
    if HEAD_MAP:
        hq = tl.load(HMAP_QO + head)
        hk = tl.load(HMAP_KV + head)
    else:
        hq = head
        hk = head
    idx_ptr = KV_IDX + item.to(tl.int64) * MAXW + tl.load(rec + 3)  # the slice of a key-chunked launch

    start_m = qb * BLOCK + qsub * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    q_base = b64 * stride_qb + hq.to(tl.int64) * stride_qh
    o_base = b64 * stride_ob + hq.to(tl.int64) * stride_oh
    k_base = b64 * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = b64 * stride_vb + hk.to(tl.int64) * stride_vh
    row_ok = offs_m < N
    if PERMUTED:
        rows = tl.load(PERM + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)

    if USE_DESC:
        # Host-built (default, once per call): 4-D descriptors [B, H_QO | H_KV, N, D] over the tensors'
        # strides (bounds per (b, head): a partial last query block reads zeros and its store clips).
        if HOST_DESC:
            desc_q = Qd
            desc_k = Kd
            desc_v = Vd
            desc_o = Od
        else:
            # Built in the program, per (batch, head) as 2-D [N, D] views (rows past N zero-filled on load,
            # clipped on store): tiles need no reshape, and Triton 3.6's warp specialisation on Hopper
            # works only with descriptors made in the kernel (host-built ones hang it; its pass rejects
            # the reshape of a 4-D tile).
            desc_q = tl.make_tensor_descriptor(Q + q_base, shape=[N, HEAD_DIM], strides=[stride_qn, 1],
                                               block_shape=[BLOCK_M, HEAD_DIM])
            desc_k = tl.make_tensor_descriptor(K + k_base, shape=[N, HEAD_DIM], strides=[stride_kn, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
            desc_v = tl.make_tensor_descriptor(V + v_base, shape=[N, HEAD_DIM], strides=[stride_vn, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
            desc_o = tl.make_tensor_descriptor(O + o_base, shape=[N, HEAD_DIM], strides=[stride_on, 1],
                                               block_shape=[BLOCK_M, HEAD_DIM])
    else:
        desc_q = 0
        desc_k = 0
        desc_v = 0
        desc_o = 0
    q = _load_rows(desc_q, Q + q_base + rows[:, None] * stride_qn + offs_d[None, :], row_ok, b, hq, start_m,
                   BLOCK_M, HEAD_DIM, USE_DESC and not PERMUTED, HOST_DESC)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    n_iter = cnt * KSUB
    if EVEN_N or ((ONE_LOOP or WS or PERSISTENT) and USE_DESC):
        # ONE_LOOP: the partial last key block goes through the same TMA loop (the descriptors zero-fill
        # rows past N) with a column mask on every tile. Warp specialisation implies it: Triton 3.6's pass
        # fails on a kernel with a second key loop after the specialised one (pointer or TMA loads alike);
        # a persistent program's tile loop fuses with one inner loop only.
        acc, l_i, m_i = _key_loop(acc, l_i, m_i, q, K, desc_k, desc_v, V, k_base, v_base, stride_kn, stride_vn,
                                  b, hk, idx_ptr, 0, n_iter, offs_m, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
                                  HEAD_DIM, BLOCK, BLOCK_N, not EVEN_N, USE_DIST, USE_DESC, WS, DOT_F32, HOST_DESC,
                                  LAZY_RESCALE)
    else:
        # Lists are ascending: the partial last key block, when kept, is the last entry; that step runs
        # in its own loop with a column mask, through the same descriptors (zero-filled past N; a pointer
        # loop here made the whole kernel spill 1.3 KB a thread at 255 registers).
        n_full = n_iter - has_tail.to(tl.int32) * KSUB
        acc, l_i, m_i = _key_loop(acc, l_i, m_i, q, K, desc_k, desc_v, V, k_base, v_base, stride_kn, stride_vn,
                                  b, hk, idx_ptr, 0, n_full, offs_m, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
                                  HEAD_DIM, BLOCK, BLOCK_N, False, USE_DIST, USE_DESC, WS, DOT_F32, HOST_DESC,
                                  LAZY_RESCALE)
        acc, l_i, m_i = _key_loop(acc, l_i, m_i, q, K, desc_k, desc_v, V, k_base, v_base, stride_kn, stride_vn,
                                  b, hk, idx_ptr, n_full, n_iter, offs_m, N, qk_scale, window, alpha, d_lo, d_hi, bar_hi,
                                  HEAD_DIM, BLOCK, BLOCK_N, True, USE_DIST, USE_DESC, False, DOT_F32, HOST_DESC,
                                  LAZY_RESCALE)

    # epilogue: rows with no kept key (l == 0) give 0 and lse = -inf
    if PERMUTED:  # read again (a distinct address expression, so not merged with the prologue's load):
        # kept live across the key loop, the scatter rows cost ptxas ~0.9 KB of spills a thread
        rows = tl.load(PERM + tl.minimum(offs_m, N - 1), mask=row_ok, other=0).to(tl.int64)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse_ptrs = LSE + (b64 * H_QO + hq) * N + rows
    o_ptrs = O + o_base + rows[:, None] * stride_on + offs_d[None, :]
    if STORE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        if CHUNKED:
            if (flags & 2) != 0:  # REC_MERGE: combine with the rows an earlier launch wrote (same slots)
                lse_old = tl.load(lse_ptrs, mask=row_ok, other=float("-inf"))
                o_old = _load_rows(desc_o, o_ptrs, row_ok, b, hq, start_m, BLOCK_M, HEAD_DIM,
                                   USE_DESC and not PERMUTED, HOST_DESC)
                top = tl.maximum(lse_old, lse)
                top = tl.where(top == float("-inf"), 0.0, top)
                w_old = tl.exp(lse_old - top)
                w_new = tl.exp(lse - top)
                total = w_old + w_new
                none = total == 0.0
                total = tl.where(none, 1.0, total)
                out = out * (w_new / total)[:, None] + o_old.to(tl.float32) * (w_old / total)[:, None]
                lse = tl.where(none, float("-inf"), top + tl.log(total))
        tl.store(lse_ptrs, lse, mask=row_ok)
    out = out.to(O.dtype.element_ty)
    if USE_DESC and not PERMUTED:
        if HOST_DESC:
            desc_o.store([b, hq, start_m, 0], out.reshape(1, 1, BLOCK_M, HEAD_DIM))
        else:
            desc_o.store([start_m, 0], out)
    else:
        tl.store(o_ptrs, out, mask=row_ok[:, None])


@_kernel_fn
def _block_sparse_fwd(
    Q, K, V, O, Qd, Kd, Vd, Od, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, PERM,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    qk_scale, window, alpha, d_lo, d_hi, bar_hi,
    N, NREC, B, NQB, MAXW, H_QO, H_KV,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, USE_DIST: tl.constexpr, STORE_LSE: tl.constexpr,
    USE_DESC: tl.constexpr, WARP_SPEC: tl.constexpr, HOST_DESC: tl.constexpr = True,
    DOT_F32: tl.constexpr = False, PERMUTED: tl.constexpr = False, ONE_LOOP: tl.constexpr = False,
    HEAD_MAP: tl.constexpr = True, PERSISTENT: tl.constexpr = False, CHUNKED: tl.constexpr = False,
    LAZY_RESCALE: tl.constexpr = False,
):
    # One program per query tile; PERSISTENT: a grid of about two programs per SM, each taking tiles
    # pid, pid + grid, ... of the launch order in one flattened loop, so the software pipeline runs on
    # from one tile's last key blocks into the next tile's first ones (no fill/drain per tile).
    if PERSISTENT:
        total = NREC * B * (BLOCK // BLOCK_M)
        for t in tl.range(tl.program_id(0), total, tl.num_programs(0), flatten=True):
            _attend_tile(t, Q, K, V, O, Qd, Kd, Vd, Od, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, PERM,
                stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                qk_scale, window, alpha, d_lo, d_hi, bar_hi, N, NREC, B, NQB, MAXW, H_QO, H_KV,
                HEAD_DIM, BLOCK, BLOCK_M, BLOCK_N, EVEN_N, USE_DIST, STORE_LSE, USE_DESC, WARP_SPEC,
                HOST_DESC, DOT_F32, PERMUTED, ONE_LOOP, HEAD_MAP, PERSISTENT, CHUNKED, LAZY_RESCALE)
    else:
        _attend_tile(tl.program_id(0), Q, K, V, O, Qd, Kd, Vd, Od, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, PERM,
                stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                qk_scale, window, alpha, d_lo, d_hi, bar_hi, N, NREC, B, NQB, MAXW, H_QO, H_KV,
                HEAD_DIM, BLOCK, BLOCK_M, BLOCK_N, EVEN_N, USE_DIST, STORE_LSE, USE_DESC, WARP_SPEC,
                HOST_DESC, DOT_F32, PERMUTED, ONE_LOOP, HEAD_MAP, PERSISTENT, CHUNKED, LAZY_RESCALE)


@_kernel_fn
def _gather_heads_rows(SRC, DST, HMAP, PERM, N, stride_sb, stride_sh, stride_sn, H_OUT,
                       HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, PERMUTED: tl.constexpr):
    # DST [B, H_OUT, N, D] contiguous <- SRC[b, HMAP[h], PERM[j] (or j), :] (one pass, rows of D elements).
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs = pid_n * ROWS + tl.arange(0, ROWS)
    ok = offs < N
    if PERMUTED:
        src_rows = tl.load(PERM + offs, mask=ok, other=0).to(tl.int64)
    else:
        src_rows = offs.to(tl.int64)
    hs = tl.load(HMAP + h).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    src = SRC + b.to(tl.int64) * stride_sb + hs * stride_sh + src_rows[:, None] * stride_sn + offs_d[None, :]
    x = tl.load(src, mask=ok[:, None], other=0.0)
    dst = DST + ((b.to(tl.int64) * H_OUT + h) * N + offs.to(tl.int64))[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dst, x, mask=ok[:, None])


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    warp_spec: bool = False  # tl.range(warp_specialize=...); implies in-kernel descriptors (see the kernel)
    use_desc: bool = True  # TMA tensor descriptors (Hopper); False: plain pointer loads
    host_desc: bool = True  # descriptors built on the host once per call; False: in each program
    one_loop: bool = False  # partial last key block in the main (TMA) loop, column-masked: one key loop
    persistent: bool = False  # ~2 programs per SM looping over tiles in one flattened loop (implies one_loop)
    lazy_rescale: bool = False  # softmax rescale only when a row's max grows by > 2^8 (FlashAttention-4's)
    maxnreg: int | None = None  # register cap a thread (ptxas), e.g. to fit a third program on an SM

    def label(self) -> str:
        return (f"M{self.block_m}N{self.block_n}w{self.num_warps}s{self.num_stages}"
                f"{'-ws' if self.warp_spec else ''}{'' if self.use_desc else '-ptr'}"
                f"{'-devdesc' if self.use_desc and not self.host_desc else ''}{'-1l' if self.one_loop else ''}"
                f"{'-p' if self.persistent else ''}{'-lz' if self.lazy_rescale else ''}"
                f"{f'-r{self.maxnreg}' if self.maxnreg else ''}")


# Hopper autotune space per head_dim, narrowed by bench/triton_tune.py on an H100 (docs/kernel.md).
# No warp specialisation: with 8 warps it ran slower; with 4 warps it hangs on host-built descriptors,
# and its in-kernel-descriptor form (label -ws-devdesc) ran 3-10% slower than these (H100, 2026-11-23).
HOPPER_CONFIGS: dict[int, list[KernelConfig]] = {
    # H100, 1 x 12 x 32760 x 64 bf16, random masks 10/50/100%: the best three of a 12-config grid
    64: [
        KernelConfig(128, 128, 4, 3),
        KernelConfig(128, 128, 4, 2),
        KernelConfig(128, 64, 8, 4),
    ],
    # H100, 1 x 12 x 32760 x 128: 128 x 64 tiles, 4 warps, 2 stages (two programs per SM) won
    # clearly over 128 x 128 with 8 warps; 3+ stages or 8 warps at 128 x 64 lost 25-40%.
    128: [
        KernelConfig(128, 64, 4, 2),
        KernelConfig(128, 128, 8, 3),
    ],
}


def fallback_config(block_size: int, device: torch.device) -> KernelConfig:
    if device.type != "cuda":  # interpreter: one tile per block, fewest Python-level steps
        return KernelConfig(block_size, block_size, 4, 1, False, False)
    return KernelConfig(min(block_size, 128), 64, 4, 2, False, False)


# ----------------------------------------------------------------------------------------------
# index data, cached per (patterns, device)
# ----------------------------------------------------------------------------------------------
@dataclass
class BlockIndex:
    """Per-call index tensors: kv_indices [h, QB, W] int32 (-1 padding replaced by 0, never read),
    kv_counts [h, QB] int32, and per schedule the kernel's launch records (``launch_records``)."""

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    block_size: int
    num_tokens: int
    _counts_cpu: torch.Tensor | None  # None: a device-only index (``index_on_device``)
    _schedules: dict = field(default_factory=dict)

    @property
    def on_device_only(self) -> bool:
        """Built from device tensors with no host copy (a dynamic selection): one key range, launch
        records built on the device, list lengths unknown to the host."""
        return self._counts_cpu is None

    @property
    def heads(self) -> int:
        return self.kv_counts.shape[0]

    @property
    def num_q_blocks(self) -> int:
        return self.kv_counts.shape[1]

    @cached_property  # the index is cached per pattern set, and this is asked on every call
    def mean_list_length(self) -> float:
        """Kept key blocks per query block, averaged over heads and query blocks."""
        if self.on_device_only:
            raise ValueError("a device-only index's list lengths are not read on the host")
        return float(self._counts_cpu.float().mean()) if self._counts_cpu.numel() else 0.0

    def launch_records(self, kind: str = "head") -> torch.Tensor:
        """int32 [h * QB, 4], one row per program in launch order (``make_schedule``): flat item
        (head * QB + query block), its list length, flags (``REC_TAIL``: the list ends with a partial last
        key block), and the list position to start at (0)."""
        return self.chunk_records(1, kind)[0]

    def chunk_records(self, chunks: int, kind: str = "head") -> list[torch.Tensor]:
        """Launch records of a key-chunked call: one int32 [programs, 4] tensor per launch.

        The key blocks are cut into ``chunks`` equal contiguous ranges and launch j runs every query
        block's list entries inside range j (a contiguous slice: lists are ascending), so while it runs
        the head in flight touches only that range of K/V, which fits in L2 where a whole head does not
        (docs/kernel.md, "key chunks"). A record is (item, slice length, flags, slice start). An item's
        first non-empty slice writes its rows; later ones carry ``REC_MERGE`` and merge into them through
        the log-sum-exp. Items with no key at all run once, in launch 0, to write zeros and lse -inf.
        """
        key = (kind, int(chunks))
        if key not in self._schedules:
            if self.on_device_only:
                if int(chunks) != 1:
                    raise ValueError("a device-only index runs in one key range: its chunks would need the "
                                     "list contents on the host")
                self._schedules[key] = [self._single_range_records(kind)]
            else:
                self._schedules[key] = [r.to(self.kv_counts.device) for r in self._chunk_records_cpu(int(chunks), kind)]
        return self._schedules[key]

    def _single_range_records(self, kind: str) -> torch.Tensor:
        """The one launch's records, built where the index lives with no host read (every item runs once:
        an empty list writes zeros and lse -inf)."""
        counts = self.kv_counts.reshape(-1)
        order = make_schedule(self.kv_counts, kind, sync_free=True).long()
        last = self.kv_indices.reshape(counts.numel(), -1).gather(1, (counts.long() - 1).clamp(min=0)[:, None])[:, 0]
        tail = (counts > 0) & (last == self.num_q_blocks - 1) & (self.num_tokens % self.block_size != 0)
        flags = tail.to(torch.int32) * REC_TAIL
        return torch.stack([order.to(torch.int32), counts[order], flags[order], torch.zeros_like(counts)], 1).contiguous()

    def _chunk_records_cpu(self, chunks: int, kind: str) -> list[torch.Tensor]:
        counts = self._counts_cpu.reshape(-1).long()
        lists = self.kv_indices.reshape(counts.numel(), -1).cpu().long()
        valid = torch.arange(lists.shape[1])[None, :] < counts[:, None]
        nk = self.num_q_blocks  # key blocks = query blocks (one block size)
        edges = [round(nk * j / chunks) for j in range(chunks + 1)]
        # position of each range's first entry in every list: the number of entries below its edge
        starts = torch.stack([((lists < e) & valid).sum(1) for e in edges], dim=1)  # [items, chunks + 1]
        starts[:, -1] = counts
        partial = self.num_tokens % self.block_size != 0
        last = lists.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
        tail = (counts > 0) & (last == nk - 1) & partial  # in the last range: it holds block nk - 1
        out = []
        for j in range(chunks):
            start, length = starts[:, j], starts[:, j + 1] - starts[:, j]
            run = (length > 0) | ((counts == 0) & (j == 0))
            flags = (tail & (j == chunks - 1)).long() * REC_TAIL + (start > 0).long() * REC_MERGE
            order = make_schedule(torch.where(run, length, -1).reshape(self._counts_cpu.shape), kind).long()
            order = order[run[order]]
            rec = torch.stack([order, length[order], flags[order], start[order]], dim=1)
            out.append(rec.to(torch.int32).contiguous())
        return out

    def head_footprints(self, resident: int) -> torch.Tensor:
        """Key blocks that ``resident`` programs in flight together touch, per head: for each head, its
        query blocks in launch order cut into groups of ``resident``, the size of each group's union of
        lists, averaged over the head's query blocks. float [h]. (A band pattern's groups touch their band;
        a random or dense head's touch all of it.)"""
        key = ("footprint", int(resident))
        if self.on_device_only:
            raise ValueError("a device-only index's footprints are not read on the host")
        if key not in self._schedules:
            h, nq = self._counts_cpu.shape
            dev = self.kv_indices.device  # on the GPU this takes milliseconds (seconds on a CPU at 14B dense)
            lists = self.kv_indices.long()
            valid = torch.arange(lists.shape[-1], device=dev)[None, None, :] < self.kv_counts[..., None].long()
            order = make_schedule(self._counts_cpu, "head_strict").long().reshape(h, nq) % nq  # per head
            group = torch.empty(h, nq, dtype=torch.long)
            group.scatter_(1, order, (torch.arange(nq) // resident).expand(h, nq))
            n_groups = -(-nq // resident)
            touched = torch.zeros(h * n_groups, nq, dtype=torch.bool, device=dev)
            rows = (torch.arange(h)[:, None, None] * n_groups + group[..., None]).to(dev).expand_as(lists)
            touched.index_put_((rows[valid], lists[valid]), torch.ones((), dtype=torch.bool, device=dev))
            unions = touched.view(h, n_groups, nq).sum(-1).float().cpu()
            sizes = torch.tensor([min(resident, nq - g * resident) for g in range(n_groups)], dtype=torch.float32)
            self._schedules[key] = (unions * sizes).sum(1) / sizes.sum()
        return self._schedules[key]


REC_TAIL = 1  # launch record flag: the slice ends with the partial last key block (column mask)
REC_MERGE = 2  # launch record flag: earlier launches wrote these rows; merge through the lse


LONG_ROW_FACTOR = 3.0  # a list this many times the mean length starts before the head-major order


def make_schedule(counts: torch.Tensor, kind: str = "head", *, sync_free: bool = False) -> torch.Tensor:
    """Launch order of the (head, query block) items, int32 [h * QB] of flat indices.

    ``head``: first the long lists (over ``LONG_ROW_FACTOR`` x the mean: text query blocks that attend
    to every key, global rows), longest first over all heads, then heads in order, each head's query
    blocks longest list first (K/V of a head stay in L2). Head-major alone started the last heads' long
    rows near the end of the launch, where they ran on alone (HunyuanVideo's 256 text rows at 5%
    density: ~18% of the time, docs/kernel.md). ``head_strict``: head-major only. ``lpt``: longest
    list first over all heads (ties head-major). ``natural``: head-major, in order. Items with a
    negative count are not launched; they sort last.
    """
    # Tensor operations on counts' device only; ``sync_free`` also skips the one host read (the longest
    # list, for the sort key; the bound nq serves as well): a device-only index schedules this way.
    h, nq = counts.shape
    flat = counts.reshape(-1).long()
    dev = flat.device
    if kind == "natural":
        order = torch.arange(h * nq, device=dev)
    elif kind == "lpt":
        order = torch.sort(-flat, stable=True).indices
    elif kind in ("head", "head_strict"):
        heads = torch.arange(h * nq, device=dev) // nq
        # above every list length (lists of one block size hold <= nq blocks)
        top = (nq if sync_free or not flat.numel() else int(flat.max())) + 1
        key = heads * (top + 1) + (top - 1 - flat)
        key = torch.where(flat < 0, h * (top + 1) + top, key)
        if kind == "head":
            live = flat > 0
            mean = (flat * live).sum().float() / live.sum().clamp(min=1).float()
            long = flat.float() > LONG_ROW_FACTOR * mean
            key = torch.where(long, -flat, key)  # before every head's items (keys >= 0), longest first
        order = torch.sort(key, stable=True).indices
    else:
        raise ValueError(f"unknown schedule {kind!r}: use head, head_strict, lpt or natural")
    return order.to(torch.int32).contiguous()


def index_from_tensors(kv_indices: torch.Tensor, kv_counts: torch.Tensor, block_size: int, num_tokens: int) -> BlockIndex:
    counts_cpu = kv_counts.to("cpu", torch.int32).contiguous()
    idx = kv_indices.to(torch.int32).clamp(min=0).contiguous()
    return BlockIndex(idx, kv_counts.to(torch.int32).contiguous(), block_size, num_tokens, counts_cpu)


def index_on_device(kv_indices: torch.Tensor, kv_counts: torch.Tensor, block_size: int, num_tokens: int) -> BlockIndex:
    """A device-only index of a dynamic selection: the tensors as they come (-1 padding cleared on the
    device), no host copy; it runs on the tl kernel in one key range (``BlockIndex.on_device_only``)."""
    return BlockIndex(kv_indices.clamp(min=0).to(torch.int32).contiguous(), kv_counts.to(torch.int32).contiguous(),
                      block_size, num_tokens, None)


_INDEXES = BoundedCache("triton.block_indexes", 128)


def block_index_for(patterns, device: torch.device) -> BlockIndex:
    """Index tensors of one call's patterns (one per head), built once per (pattern keys, device)."""
    key = (tuple(p.key for p in patterns), str(device))
    return _INDEXES.get_or_build(key, lambda: _build_block_index(patterns, device))


def _build_block_index(patterns, device: torch.device) -> BlockIndex:
    nq = patterns[0].num_q_blocks
    width = max(1, max(int(p.kv_indices.shape[1]) for p in patterns))
    indices = torch.zeros(len(patterns), nq, width, dtype=torch.int32)
    for h, p in enumerate(patterns):
        indices[h, :, : p.kv_indices.shape[1]] = p.kv_indices.clamp(min=0)
    counts = torch.stack([p.kv_counts.to(torch.int32) for p in patterns])
    return BlockIndex(indices.to(device), counts.to(device), patterns[0].block_size,
                      patterns[0].layout.num_tokens, counts)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------
def _ensure_allocator() -> None:
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        def alloc(size: int, alignment: int, stream):
            return torch.empty(size, dtype=torch.int8, device="cuda")

        triton.set_allocator(alloc)


def _interpreter_compat() -> None:
    """Triton 3.6's interpreter turns a scalar tensor into a loop bound with ``int(array)``, which NumPy
    >= 2.4 refuses for its 1-element arrays ("only 0-dimensional arrays can be converted"): loops with
    run-time bounds then fail under TRITON_INTERPRET=1. Patch that one conversion (interpreter only)."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_sparsevdit_index_fix", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._sparsevdit_index_fix = True


_KERNEL_INTERPRETED: bool | None = None
_AUTOTUNED: dict = {}
_TUNE_KEY = ["HEAD_DIM", "BLOCK", "EVEN_N", "USE_DIST", "STORE_LSE", "PERMUTED"]


def _set_block_shapes(nargs) -> None:
    """Autotune pre-hook: give the host descriptors the block shapes of the config being run."""
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["Qd"].block_shape = [1, 1, bm, d]
    nargs["Od"].block_shape = [1, 1, bm, d]
    nargs["Kd"].block_shape = [1, 1, bn, d]
    nargs["Vd"].block_shape = [1, 1, bn, d]


def _autotuned_kernel(head_dim: int):
    if head_dim not in _AUTOTUNED:
        configs = [
            triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "WARP_SPEC": c.warp_spec,
                           "ONE_LOOP": c.one_loop, "HOST_DESC": c.host_desc and not c.warp_spec,
                           "PERSISTENT": c.persistent, "LAZY_RESCALE": c.lazy_rescale},
                          num_warps=c.num_warps, num_stages=c.num_stages, maxnreg=c.maxnreg, pre_hook=_set_block_shapes)
            for c in HOPPER_CONFIGS.get(head_dim, HOPPER_CONFIGS[128])
        ]
        _AUTOTUNED[head_dim] = triton.autotune(configs, key=_TUNE_KEY, cache_results=True)(_block_sparse_fwd)
    return _AUTOTUNED[head_dim]


def _host_descriptors(q, k, v, out, block_m: int, block_n: int):
    """4-D TMA descriptors over the [B, H, N, D] views as they are (any strides TMA accepts)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    d = q.shape[-1]
    return (
        TensorDescriptor.from_tensor(q, [1, 1, block_m, d]),
        TensorDescriptor.from_tensor(k, [1, 1, block_n, d]),
        TensorDescriptor.from_tensor(v, [1, 1, block_n, d]),
        TensorDescriptor.from_tensor(out, [1, 1, block_m, d]),
    )


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA needs a unit last stride, other strides of 16-byte multiples and a 16-byte aligned base."""
    size = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((st * size) % 16 == 0 for st in t.stride()[:-1]))


def gather_heads_rows(src: torch.Tensor, heads: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """``src[:, heads][:, :, perm]`` as a new contiguous [B, len(heads), N, D] tensor, in one Triton pass.

    ``src`` is any [B, H, N, D] view with a unit last stride. PyTorch's advanced indexing does the same
    at a fraction of the memory bandwidth (profiled on the H100: ~0.6 TB/s), which at 75K tokens cost
    as much as a 10%-dense attention call.
    """
    _load_triton()
    batch, _, n, d = src.shape
    h = heads.numel()
    dst = torch.empty((batch, h, n, d), dtype=src.dtype, device=src.device)
    rows = 64
    _gather_heads_rows[(triton.cdiv(n, rows), h, batch)](
        src, dst, heads, perm if perm is not None else heads, n, src.stride(0), src.stride(1), src.stride(2), h,
        HEAD_DIM=d, ROWS=rows, PERMUTED=perm is not None, num_warps=4,
    )
    return dst


def triton_missing() -> str | None:
    """Why triton cannot be used here, or None (imports it, in the mode TRITON_INTERPRET says)."""
    if not HAS_TRITON:
        return "triton is not installed (pip install 'sparsevdit[triton]')"
    try:
        _load_triton()
    except Exception as exc:  # pragma: no cover - a broken install
        return f"triton is not importable: {exc!r}"
    return None


def check_inputs(q: torch.Tensor, block_size: int) -> str | None:
    """Why the kernel cannot run these inputs, or None."""
    if q.device.type != "cuda" and not (q.device.type == "cpu" and interpret_mode()):
        return f"the Triton kernel needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter), got {q.device.type}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not float16 or bfloat16"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} is not 64 or 128"
    if block_size not in SUPPORTED_BLOCK_SIZES:
        return (f"block_size {block_size} is not 64 or 128 (the query tile equals the block or is half of it, "
                "and 128 x 128 tiles is what the tensor cores and the shared memory of one SM suit)")
    return triton_missing()


def group_call_arguments(q, k, v, index: BlockIndex, *, heads, perm, out, lse, return_lse: bool):
    """Checked arguments of a call over a head group (our kernels' shared contract): q/k/v with a unit last
    stride, the head map (int32 [h]; all heads in order when None), the token permutation (int32 [N] or
    None), ``out`` (allocated like q when None) and ``lse`` (allocated, -inf, when asked for and None)."""
    batch, total_heads, n, _ = q.shape
    if heads is None:
        if total_heads != index.heads:
            raise ValueError(f"q has {total_heads} heads but the index has {index.heads}")
        heads = _arange(index.heads, q.device)
    else:
        heads = heads.to(device=q.device, dtype=torch.int32)
        if heads.numel() != index.heads:
            raise ValueError(f"{heads.numel()} heads given but the index has {index.heads}")
    if n != index.num_tokens or index.num_q_blocks != -(-n // index.block_size):
        raise ValueError(f"q has {n} tokens but the index was built for {index.num_tokens}")
    if perm is not None:
        perm = perm.to(device=q.device, dtype=torch.int32)
        if perm.numel() != n:
            raise ValueError(f"perm has {perm.numel()} entries for {n} tokens")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if out is None:
        out = torch.empty_like(q)  # keeps q's strides when they are dense ([B, N, H, D] views stay so)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {tuple(q.shape)} {q.dtype} tensor with a unit last stride")
    elif any(out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in (q, k, v)):
        # K/V rows are read by many programs, and with key chunks later launches read O back
        raise ValueError("out shares memory with q, k or v: pass a separate output tensor")
    if return_lse and lse is None:
        lse = torch.full((batch, total_heads, n), float("-inf"), dtype=torch.float32, device=q.device)
    elif lse is not None and (lse.shape != (batch, total_heads, n) or lse.dtype != torch.float32
                              or not lse.is_contiguous()):
        raise ValueError(f"lse must be a contiguous float32 tensor of shape {(batch, total_heads, n)}")
    return q, k, v, heads, perm, out, lse


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    scale: float | None = None,
    *,
    return_lse: bool = False,
    distance_window: int | None = None,
    alpha: float = 1.0,
    damp_range: tuple[int, int, int] | None = None,
    schedule: str = "head",
    config: KernelConfig | None = None,
    heads: torch.Tensor | None = None,
    perm: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    kv_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention forward over ``[B, H, N, D]`` tensors (any strides with a unit last one).

    ``index`` gives each of its h heads the kept key blocks per query block (see ``block_index_for`` /
    ``index_from_tensors``). By default the h heads are all of q's heads. ``heads`` (int tensor [h]) runs
    the index on those heads of q/k/v only, and ``perm`` (int tensor [N]) says the index is over a
    reordered sequence whose position j is token ``perm[j]``: reading and writing go straight to the
    callers' tensors (no gather of q, no scatter of the output; k and v of a reordered group are gathered
    in one pass). ``out`` [B, H, N, D] (any strides) and ``lse`` float32 [B, H, N] receive the result
    (only the covered heads are written); allocated like q when None.

    Returns ``(out, lse or None)``; lse is the natural-log log-sum-exp; rows that keep no key get 0 and
    lse -inf. ``distance_window``/``alpha``: multiply positive logits of pairs with
    ``|q_idx - k_idx| > distance_window`` (positions in the reordered sequence) by ``alpha`` (off when None);
    ``damp_range`` = (lo, hi, bar_hi): only pairs of positions in [lo, hi) count, and rows in [lo, bar_hi)
    get -inf for their far keys instead (UltraViCo's first-frame rule; default: all positions, no bar).
    ``config`` forces one kernel configuration (else autotuned on Hopper, a fixed fallback elsewhere).
    ``kv_chunks``: run the key blocks in that many contiguous ranges, one launch each, merged through the
    lse (so a head's K/V in flight fits in L2 at long sequences); None takes ``SPARSEVDIT_KV_CHUNKS``
    when set, else picks it (``auto_kv_chunks``, 1 off Hopper).
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one shape [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    batch, total_heads, n, head_dim = q.shape
    reason = check_inputs(q, index.block_size)
    if reason:
        raise ValueError(reason)
    _load_triton()
    head_map = heads is not None
    q, k, v, heads, perm, out, lse = group_call_arguments(q, k, v, index, heads=heads, perm=perm, out=out, lse=lse,
                                                          return_lse=return_lse)
    if perm is not None:  # K/V of a reordered group: gathered once, read in place by the key loop
        k, v = gather_heads_rows(k, heads, perm), gather_heads_rows(v, heads, perm)
        kv_heads = _arange(index.heads, q.device)
    else:
        kv_heads = heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    use_dist = distance_window is not None
    window = int(distance_window) if use_dist else 0
    d_lo, d_hi, bar_hi = damp_range if damp_range is not None else (0, n, 0)
    bs = index.block_size
    hopper = hopper_features(q.device)
    # the environment's tuning knob does not reach a device-only index: it runs in one key range
    if kv_chunks is None and os.environ.get(KV_CHUNKS_ENV) and not index.on_device_only:
        kv_chunks = os.environ[KV_CHUNKS_ENV]
        if not kv_chunks.isdigit():
            raise ValueError(f"{KV_CHUNKS_ENV}={kv_chunks!r}: give a positive whole number of key ranges (1: no chunks)")
        kv_chunks = int(kv_chunks)
    if kv_chunks is None:
        kv_chunks = auto_kv_chunks(index, head_dim, q.element_size(), q.device) if hopper else 1
    elif int(kv_chunks) < 1:
        raise ValueError(f"kv_chunks must be a positive number of key ranges, got {kv_chunks!r}")
    chunked = int(kv_chunks) > 1
    if chunked and not return_lse:  # the launches merge through the lse: keep it in a scratch buffer
        lse = torch.empty((batch, total_heads, n), dtype=torch.float32, device=q.device)
    common = dict(
        qk_scale=scale * LOG2E, window=window, alpha=float(alpha), d_lo=d_lo, d_hi=d_hi, bar_hi=bar_hi,
        N=n, B=batch, NQB=index.num_q_blocks, MAXW=index.kv_indices.shape[-1],
        H_QO=total_heads, H_KV=k.shape[1],
        HEAD_DIM=head_dim, BLOCK=bs, EVEN_N=(n % bs == 0), USE_DIST=use_dist, STORE_LSE=return_lse or chunked,
        PERMUTED=perm is not None, HEAD_MAP=head_map, CHUNKED=chunked,
    )
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    tma_ok = all(_tma_ready(t) for t in (q, k, v, out))
    # One launch per key range, in order (a launch merges into the rows the earlier ones wrote).
    for records in index.chunk_records(int(kv_chunks), schedule):
        if records.shape[0] == 0:
            continue
        args = (lse if common["STORE_LSE"] else out, index.kv_indices, records, heads, kv_heads,
                perm if perm is not None else heads, *strides)
        _launch(q, k, v, out, args, common, records.shape[0], config, hopper, tma_ok)
    return out, (lse if return_lse else None)


def _launch(q, k, v, out, args, common, n_records: int, config, hopper: bool, tma_ok: bool) -> None:
    """One kernel launch over ``n_records`` launch records: autotuned on Hopper, else ``config`` or the
    fallback."""
    bs, head_dim = common["BLOCK"], common["HEAD_DIM"]
    n_items = n_records * common["B"]
    common = dict(common, NREC=n_records)
    if config is None and hopper and bs == 128 and tma_ok:
        cfg0 = HOPPER_CONFIGS.get(head_dim, HOPPER_CONFIGS[128])[0]
        descs = _host_descriptors(q, k, v, out, cfg0.block_m, cfg0.block_n)  # block shapes set per config
        kernel = _autotuned_kernel(head_dim)
        def grid(meta):
            tiles = n_items * (bs // meta["BLOCK_M"])
            if not meta.get("PERSISTENT"):
                return (tiles,)
            return (persistent_programs(tiles, meta["BLOCK_N"], meta.get("num_warps", 4), meta["WARP_SPEC"], q.device),)
        if any(not c.host_desc or c.warp_spec for c in HOPPER_CONFIGS.get(head_dim, HOPPER_CONFIGS[128])):
            _ensure_allocator()  # a config builds its descriptors in the kernel (scratch from the allocator)
        kernel[grid](q, k, v, out, *descs, *args, **common, USE_DESC=True)
        return
    cfg = config or fallback_config(bs, q.device)
    if cfg.block_m > bs or bs % cfg.block_m or cfg.block_n > bs or bs % cfg.block_n:
        raise ValueError(f"config {cfg.label()} does not tile block_size {bs}")
    if cfg.warp_spec and hopper and os.environ.get(EXPERIMENTAL_WS_ENV) != "1":
        raise ValueError(
            f"config {cfg.label()}: warp specialisation is experimental. On the H100 with Triton 3.6 it "
            "wrote a wrong lse for rows without kept keys and ran slower than the default config "
            f"(docs/kernel.md); use a config without warp_spec, or set {EXPERIMENTAL_WS_ENV}=1 to run it anyway")
    # An explicit descriptor config also runs under the interpreter (tests of the TMA path's indexing).
    use_desc = cfg.use_desc and (hopper or interpret_mode()) and tma_ok
    # warp specialisation needs descriptors built in the kernel (see the kernel's WS flag)
    host_desc = (cfg.host_desc and not cfg.warp_spec) or not use_desc
    if interpret_mode():
        _interpreter_compat()
    elif use_desc and not host_desc:
        _ensure_allocator()
    descs = (_host_descriptors(q, k, v, out, cfg.block_m, cfg.block_n) if use_desc and host_desc
             else (q, k, v, out))
    tiles = n_items * (bs // cfg.block_m)
    programs = (persistent_programs(tiles, cfg.block_n, cfg.num_warps, cfg.warp_spec, q.device)
                if cfg.persistent else tiles)
    _block_sparse_fwd[(programs,)](
        q, k, v, out, *descs, *args, **common, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, USE_DESC=use_desc,
        WARP_SPEC=cfg.warp_spec and hopper, HOST_DESC=host_desc, ONE_LOOP=cfg.one_loop, PERSISTENT=cfg.persistent,
        LAZY_RESCALE=cfg.lazy_rescale,
        DOT_F32=interpret_mode() and q.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )


# Warp-specialised configs run on a GPU only with this set to 1 (benchmarks; see _launch).
EXPERIMENTAL_WS_ENV = "SPARSEVDIT_EXPERIMENTAL_WS"

# Overrides the key-range count of every call that does not pass kv_chunks (1 turns key chunks off).
KV_CHUNKS_ENV = "SPARSEVDIT_KV_CHUNKS"

# Key chunks (docs/kernel.md, "key chunks"; measured on the H100, bench/results/kv-chunks-h100.json):
# chunk when the K/V that one head's programs in flight touch exceeds L2_MIN_SHARE of L2 (band patterns
# at HunyuanVideo touch ~0.6 of it and gained nothing; random heads at Wan2.1-14B, ~0.75, gained) and is
# not the same list for all of them (touched >= SCATTER_MIN x a row's list; dense heads, whose programs
# read in step, lost 1-2% chunked), into ranges of at most L2_SHARE of L2, keeping at least MIN_SLICE
# key blocks per row and launch (each launch re-reads Q and merges O).
L2_MIN_SHARE = 0.7
L2_SHARE = 0.5
SCATTER_MIN = 1.5
MIN_SLICE = 12
MAX_KV_CHUNKS = 4


def auto_kv_chunks(index: BlockIndex, head_dim: int, element_size: int, device: torch.device) -> int:
    """Number of key ranges for a call on ``device`` (1 off CUDA). Per head: the key blocks its programs
    in flight touch (``BlockIndex.head_footprints``, two programs per SM) against its mean list length.
    On the H100 (50 MB L2) random heads take 2 at Wan2.1-14B (38.7 MB of K/V a head) and 3 at
    HunyuanVideo (61 MB); Wan2.1-1.3B (16.8 MB), dense heads and narrow bands stay at 1."""
    if device.type != "cuda" or index.on_device_only:
        return 1
    key = ("kv_chunks", head_dim, element_size, str(device))  # decided once per index: every call runs this
    if key not in index._schedules:
        index._schedules[key] = _kv_chunks_rule(index, head_dim, element_size, torch.cuda.get_device_properties(device))
    return index._schedules[key]


def _kv_chunks_rule(index: BlockIndex, head_dim: int, element_size: int, props) -> int:
    l2 = getattr(props, "L2_cache_size", 0)
    if not l2:
        return 1
    block_bytes = index.block_size * head_dim * 2 * element_size  # K and V
    mean_list = index._counts_cpu.float().mean(1).clamp(min=1)
    key_blocks = index.num_q_blocks
    if (key_blocks * block_bytes <= L2_MIN_SHARE * l2  # a whole head fits
            or float(mean_list.mean()) < 2 * MIN_SLICE  # rows too short to cut
            or bool((key_blocks / mean_list < SCATTER_MIN).all())):  # every head (nearly) dense
        return 1
    touched = index.head_footprints(2 * props.multi_processor_count)
    need = torch.ceil(touched * block_bytes / (L2_SHARE * l2))
    chunk = (touched * block_bytes > L2_MIN_SHARE * l2) & (touched / mean_list >= SCATTER_MIN)
    need = torch.where(chunk, need, torch.ones_like(need))
    chunks = int(need.max())
    chunks = min(chunks, MAX_KV_CHUNKS, max(1, int(float(index._counts_cpu.float().mean()) // MIN_SLICE)))
    return max(1, chunks)


def persistent_programs(tiles: int, block_n: int, num_warps: int, warp_spec: bool, device: torch.device) -> int:
    """Grid of a persistent launch: as many programs as the GPU holds at once, never more than the tiles.
    Two per SM only for 4-warp programs with 32-key tiles: at head_dim 128 a persistent program also
    buffers the next tile's Q, 131 KB of shared memory with 64-key tiles against 98 KB with 32 (sm_90
    compile, bench/compile_check.py), and an SM has 228 KB; warp-specialised or 8-warp programs take one
    SM each by registers. Under the interpreter 3, so that the tests walk programs through several tiles."""
    if device.type != "cuda":
        return min(tiles, 3)
    per_sm = 2 if (num_warps == 4 and not warp_spec and block_n <= 32) else 1
    return min(tiles, per_sm * torch.cuda.get_device_properties(device).multi_processor_count)


@clear_with_the_others
@lru_cache(maxsize=64)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int32, device=device)
