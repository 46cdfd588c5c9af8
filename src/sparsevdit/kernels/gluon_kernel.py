"""Block-sparse attention forward for Hopper in Gluon: FlashAttention-3's structure over our block lists.

Imported only when the ``gluon`` backend launches or a compile check builds it (importing Triton fixes
its interpreter mode, see triton_sparse.py). Design (docs/kernel.md, "The Gluon kernel"):

* A persistent grid of one CTA per SM walks query tiles (128 rows of one (batch, head) query block) in
  the launch order of ``BlockIndex.launch_records`` (longest lists first), tile ``pid, pid + grid, ...``.
* Three ``gl.warp_specialize`` partitions per CTA: a loader warp (24 registers) that TMA-loads each
  tile's Q (two 64-row halves, into one of ``Q_BUFS`` buffers) and then K and V of every listed key
  block into a ring of ``STAGES`` buffers; and two consumer warpgroups of 64 query rows that share every K/V tile. The loader runs on
  into the next tile's keys while the consumers finish the current one, so a short list does not drain
  the pipeline (the probe without this lost 10% at 10% density).
* mbarriers: ``q_ready`` (loader -> consumers) and ``q_empty`` (both consumers -> loader) per Q buffer;
  ``k_ready`` / ``v_ready`` per ring slot (S = QK^T starts before V lands) and ``k_empty`` / ``v_empty``
  (both consumers arrive: a K slot frees as soon as its S is done, a V slot after its P V). Phases
  follow running counters, so the ring continues across tiles.
* A consumer: S = Q K^T and O += P V as async wgmma (Q, K, V from shared memory, P from registers in the
  A-operand layout), online softmax in base 2 in the accumulator's registers, software-pipelined: S_j
  and P_{j-1} V_{j-1} are issued together and S_j's softmax runs while the P V product is in flight
  (FlashAttention-3's intra-warpgroup overlap; 0.84-0.94 -> 1.01-1.02 of cuDNN dense). Rows with no
  kept key give 0 and lse -inf.
* Inputs are [B, H, N, D] views read in place through 2-D TMA descriptors over rows of the storage
  (``row_view``): contiguous tensors as [B*H*N, D], diffusers' [B, N, H, D] storage (or a fused QKV
  chunk) as [B*N, H*D] with head h at column h*D; token n of (b, h) is row b*ROW_B + h*ROW_H + n, column
  h*COL_H. A tile near the end of a (b, h) reads the next rows of the storage: the partial last key
  block (always the last entry of an ascending list) is column-masked, and query rows past N are read
  but never stored. Rows past the storage's end read 0. (Those neighbouring rows are other tokens of the
  same tensor, so finite: a masked key's p is 0, and 0 x a finite V row adds nothing.) The call's heads
  map to the tensors' heads
  through HMAP_QO / HMAP_KV (a head group of a layer); O is written by pointer with its own strides.
* Constexpr flags cannot pass through Triton 3.6's worker-partition arguments, so the tail mask and
  the lse store are runtime branches (once per tile / per last key block).
"""

from __future__ import annotations

import functools

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper

from ..caches import clear_with_the_others

mbarrier = hopper.mbarrier
tma = hopper.tma
# Two builds both called Triton 3.6.0 name the TMA load differently: the lent H200's has
# async_copy_global_to_shared, PyPI's wheel async_load (and raises on the old name).
if not hasattr(tma, "async_load"):
    tma.async_load = tma.async_copy_global_to_shared

BLOCK = 128  # query rows per tile (two consumers of HALF) = keys per K/V tile = the pattern block
HALF = 64
MAX_REGISTERS = 168  # 3 warpgroups x 128 threads x 168 fit the register file; setmaxnreg shifts them
CONSUMER_REGISTERS = gl.constexpr(232)  # read inside the kernel: module constants must be constexpr
LOADER_REGISTERS = gl.constexpr(24)


@gluon.constexpr_function
def _wgmma_layout(n):
    """Accumulator layout of a one-warpgroup wgmma with n columns (16-bit operands)."""
    n = int(getattr(n, "value", n))
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _tile_record(SCHED, t, B, NQB):
    # Tile t of the launch: record t // B (item = call head * NQB + query block, list length, flags),
    # batch t % B.
    rec = SCHED + (t // B) * 4
    item = gl.load(rec)
    return item, gl.load(rec + 1), gl.load(rec + 2), t % B, item // NQB, item % NQB


@gluon.jit
def _geometry(G):
    # Row/column map of Q (G[0:3]) and K/V (G[3:6]), O's strides (G[6:9]), the tensors' head counts for
    # the lse (G[9]): one small int64 array instead of ten kernel arguments, read once per tile.
    return (gl.load(G), gl.load(G + 1), gl.load(G + 2), gl.load(G + 3), gl.load(G + 4), gl.load(G + 5),
            gl.load(G + 6), gl.load(G + 7), gl.load(G + 8), gl.load(G + 9))


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, masked, tail_keys, cols):
    # Online softmax over one S tile in base 2: the new running max, P, the rescale factor and the sum.
    if masked:
        s = gl.where(gl.expand_dims(cols < tail_keys, 0), s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    return m_new, p, alpha, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _consume(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, O, LSE, SCHED, HMAP_QO,
             G, N, NQB, B, n_tiles, store_lse, qk_scale, HALF_IDX: gl.constexpr):
    # One consumer warpgroup: rows HALF_IDX * 64 .. + 64 of every tile this CTA takes. Software-pipelined
    # as FlashAttention-3's intra-warpgroup overlap: S_j = Q K_j^T and O += P_{j-1} V_{j-1} are issued
    # together, the softmax of S_j runs while the P V product is still on the tensor cores.
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    s_layout: gl.constexpr = _wgmma_layout(BLOCK_N)
    o_layout: gl.constexpr = _wgmma_layout(HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    Q_BUFS: gl.constexpr = q_smem.type.shape[0] // 2
    s_zero = gl.zeros([64, BLOCK_N], gl.float32, s_layout)
    tail_keys = N - (NQB - 1) * BLOCK_N  # valid keys in the last key block
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    _qrb, _qrh, _qch, _krb, _krh, _kch, o_sb, o_sh, o_sn, h_qo = _geometry(G)
    it = 0
    tile_i = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        item, cnt, flags, b, head, qb = _tile_record(SCHED, t, B, NQB)
        last_masked = gl.where((flags & 1) != 0, cnt - 1, -1)  # the list ends with the partial block
        m_i = gl.full([64], float("-inf"), gl.float32, s_rows)
        l_i = gl.full([64], 0.0, gl.float32, s_rows)
        acc = gl.zeros([64, HEAD_DIM], gl.float32, o_layout)
        p16 = gl.zeros([64, BLOCK_N], q_smem.dtype, p_layout)
        prev = 0
        q = q_smem.index((tile_i % Q_BUFS) * 2 + HALF_IDX)
        mbarrier.wait(q_ready.index(tile_i % Q_BUFS), (tile_i // Q_BUFS) & 1)
        if cnt > 0:  # prologue: S_0 and its softmax
            slot = it % STAGES
            mbarrier.wait(k_ready.index(slot), (it // STAGES) & 1)
            s = hopper.warpgroup_mma(q, k_bufs.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s = hopper.warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            mbarrier.arrive(k_empty.index(slot), count=1)
            m_i, p, alpha, l_i = _softmax_step(s, m_i, l_i, qk_scale, last_masked == 0, tail_keys, cols)
            p16 = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            prev = it
            it += 1
        for j in range(1, cnt):
            slot = it % STAGES
            mbarrier.wait(k_ready.index(slot), (it // STAGES) & 1)
            s = hopper.warpgroup_mma(q, k_bufs.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            prev_slot = prev % STAGES
            mbarrier.wait(v_ready.index(prev_slot), (prev // STAGES) & 1)
            acc = hopper.warpgroup_mma(p16, v_bufs.index(prev_slot), acc, is_async=True)
            s = hopper.warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # S_j done, P V may run on
            mbarrier.arrive(k_empty.index(slot), count=1)
            m_i, p, alpha, l_i = _softmax_step(s, m_i, l_i, qk_scale, j == last_masked, tail_keys, cols)
            # p16 is the product's register operand: it stays live (a dep) until the product is done
            acc, p16 = hopper.warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
            mbarrier.arrive(v_empty.index(prev_slot), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
            p16 = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            prev = it
            it += 1
        mbarrier.arrive(q_empty.index(tile_i % Q_BUFS), count=1)  # every S of this tile is done
        tile_i += 1
        if cnt > 0:  # the last P V
            prev_slot = prev % STAGES
            mbarrier.wait(v_ready.index(prev_slot), (prev // STAGES) & 1)
            acc = hopper.warpgroup_mma(p16, v_bufs.index(prev_slot), acc, is_async=True)
            acc, p16 = hopper.warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
            mbarrier.arrive(v_empty.index(prev_slot), count=1)

        empty = l_i == 0.0
        l_safe = gl.where(empty, 1.0, l_i)
        out = acc / gl.expand_dims(gl.convert_layout(l_safe, o_rows), 1)
        hq = gl.load(HMAP_QO + head).to(gl.int64)
        rows = qb * BLOCK_N + HALF_IDX * 64 + gl.arange(0, 64, layout=o_rows)
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        ptrs = (O + b * o_sb + hq * o_sh + gl.expand_dims(rows.to(gl.int64) * o_sn, 1)
                + gl.expand_dims(offs_d, 0))
        gl.store(ptrs, out.to(O.dtype.element_ty), mask=gl.expand_dims(rows < N, 1))
        if store_lse != 0:
            lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
            srows = qb * BLOCK_N + HALF_IDX * 64 + gl.arange(0, 64, layout=s_rows)
            gl.store(LSE + (b * h_qo + hq) * N + srows, lse, mask=srows < N)


@gluon.jit
def _load(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
          KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles):
    # The producer warp: per tile, Q (after both consumers released the last one), then K and V of each
    # listed key block into the ring, running ahead of the consumers by up to STAGES blocks.
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    Q_BUFS: gl.constexpr = q_smem.type.shape[0] // 2
    q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, _osb, _osh, _osn, _hqo = _geometry(G)
    it = 0
    tile_i = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        item, cnt, flags, b, head, qb = _tile_record(SCHED, t, B, NQB)
        hq = gl.load(HMAP_QO + head)
        hk = gl.load(HMAP_KV + head)
        q_row = (b * q_rb + hq * q_rh + qb * BLOCK_N).to(gl.int32)
        q_col = (hq * q_ch).to(gl.int32)
        k_row = (b * k_rb + hk * k_rh).to(gl.int32)
        k_col = (hk * k_ch).to(gl.int32)
        qbuf = tile_i % Q_BUFS
        mbarrier.wait(q_empty.index(qbuf), ((tile_i // Q_BUFS) & 1) ^ 1)  # starts as if phase 1 completed
        mbarrier.expect(q_ready.index(qbuf), 2 * q_desc.block_type.nbytes)
        tma.async_load(q_desc, [q_row, q_col], q_ready.index(qbuf), q_smem.index(qbuf * 2))
        tma.async_load(q_desc, [q_row + 64, q_col], q_ready.index(qbuf), q_smem.index(qbuf * 2 + 1))
        tile_i += 1
        idx_ptr = KV_IDX + item.to(gl.int64) * MAXW
        for j in range(cnt):
            slot = it % STAGES
            phase = (it // STAGES) & 1
            start = k_row + gl.load(idx_ptr + j) * BLOCK_N
            mbarrier.wait(k_empty.index(slot), phase ^ 1)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma.async_load(k_desc, [start, k_col], k_ready.index(slot), k_bufs.index(slot))
            mbarrier.wait(v_empty.index(slot), phase ^ 1)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma.async_load(v_desc, [start, k_col], v_ready.index(slot), v_bufs.index(slot))
            it += 1


# Worker partitions share one signature (Triton 3.6): the second consumer and the loader.
@gluon.jit
def _second_consumer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty,
                     v_empty, O, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles, store_lse,
                     qk_scale):
    _consume(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, O, LSE, SCHED, HMAP_QO, G,
             N, NQB, B, n_tiles, store_lse, qk_scale, 1)


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
            O, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles, store_lse, qk_scale):
    _load(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
          KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles)


@gluon.jit
def _first_consumer(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, O, LSE, SCHED,
                    HMAP_QO, G, N, NQB, B, n_tiles, store_lse, qk_scale):
    _consume(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, O, LSE, SCHED, HMAP_QO, G,
             N, NQB, B, n_tiles, store_lse, qk_scale, 0)


@gluon.jit
def block_sparse_fwd(q_desc, k_desc, v_desc, O, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles,
                     store_lse, qk_scale, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                     Q_BUFS: gl.constexpr):
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2 * Q_BUFS, 64, HEAD_DIM], q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, 128, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, 128, HEAD_DIM], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [Q_BUFS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [Q_BUFS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(Q_BUFS):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # both consumers
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # both consumers
        mbarrier.init(v_empty.index(i), count=2)

    workers = (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
               O, LSE, KV_IDX, SCHED, HMAP_QO, HMAP_KV, G, N, NQB, B, MAXW, n_tiles, store_lse, qk_scale)
    gl.warp_specialize([
        (_first_consumer, (q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, O, LSE, SCHED,
                           HMAP_QO, G, N, NQB, B, n_tiles, store_lse, qk_scale)),
        (_second_consumer, workers),
        (_loader, workers),
    ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])


def row_view(t) -> tuple | None:
    """How TMA reads [B, H, N, D] ``t`` in place as 2-D rows: (rows, width, row stride, ROW_B, ROW_H,
    COL_H) with token n of (b, h) at row b*ROW_B + h*ROW_H + n, column h*COL_H; None when no such view
    exists (the caller copies). Contiguous: [B*H*N, D]; [B, N, H, D] storage or a fused-QKV chunk:
    [B*N, H*D] (row stride the token's stride)."""
    batch, heads, n, d = t.shape
    sb, sh, sn, sd = t.stride()
    size = t.element_size()
    if sd != 1 or sn <= 0 or t.data_ptr() % 16 or (sn * size) % 16:
        return None
    if heads == 1 or (sh >= sn and sh % sn == 0):
        row_h, col_h, width = (0 if heads == 1 else sh // sn), 0, d
    elif sh < sn and sh % d == 0 and (heads - 1) * sh + d <= sn:  # heads side by side in a token's row
        row_h, col_h, width = 0, sh, (heads - 1) * sh + d
    else:
        return None
    if batch == 1:
        row_b = 0
    elif sb % sn == 0:
        row_b = sb // sn
    else:
        return None
    rows = (batch - 1) * row_b + (heads - 1) * row_h + n
    return rows, width, sn, row_b, row_h, col_h


def _descriptor(t, view, block_rows: int):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    rows, width, stride, *_ = view
    d = t.shape[-1]
    dtype = gl.bfloat16 if str(t.dtype) == "torch.bfloat16" else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([block_rows, d], dtype)
    return TensorDescriptor(t, [rows, width], [stride, 1], [block_rows, d], layout)


def tma_views(q, k, v) -> list[tuple]:
    """The ``row_view`` of q, k and v, copying none: k and v must share one (the kernel maps their rows
    alike)."""
    views = [row_view(t) for t in (q, k, v)]
    if any(vw is None for vw in views):
        raise ValueError("a tensor has no 2-D row view for TMA (see row_view); make it contiguous")
    if views[1][3:] != views[2][3:]:
        raise ValueError("k and v must share one memory layout (strides)")
    return views


def descriptors(q, k, v, views):
    """TMA descriptors of q (64-row tiles), k and v (128-row tiles) over their views (``tma_views``)."""
    return _descriptor(q, views[0], HALF), _descriptor(k, views[1], BLOCK), _descriptor(v, views[2], BLOCK)


SHARED_BYTES = 227 * 1024  # an sm_90 block's shared memory


def q_buffers(head_dim: int, stages: int) -> int:
    """Q buffers that fit beside ``stages`` K/V buffers (2: the loader fetches the next tile's Q while
    this one runs, so a tile starts without waiting on TMA; 1 where shared memory is short)."""
    tile_bytes = BLOCK * head_dim * 2
    return 2 if (2 + 2 * stages) * tile_bytes + 4096 <= SHARED_BYTES else 1


@clear_with_the_others
@functools.lru_cache(maxsize=256)
def geometry_tensor(values: tuple, device) -> "torch.Tensor":
    """The kernel's int64 geometry array (``_geometry``) on ``device``, made once per layout: a layer's
    calls repeat the same few, and a fresh host-to-device copy per launch would sit on the hot path.
    Never written after creation, so sharing it between launches is safe."""
    import torch

    return torch.tensor(values, dtype=torch.int64, device=device)


def launch(q, k, v, views, out, lse, store_lse: bool, kv_indices, records, num_q_blocks: int, scale: float,
           grid: int, stages: int, hmap_qo, hmap_kv) -> None:
    """One persistent launch over ``records`` (``BlockIndex.launch_records``) x batch tiles, ``grid`` CTAs.
    Call head i reads q/o head ``hmap_qo[i]`` and k/v head ``hmap_kv[i]`` (int32 tensors); ``lse`` is
    [B, H_q, N] float32 (or a 1-element dummy with ``store_lse`` False); ``views`` from ``tma_views``."""
    import torch

    batch, heads_q, n, d = q.shape
    dq, dk, dv = descriptors(q, k, v, views)
    geometry = geometry_tensor((*views[0][3:], *views[1][3:], *out.stride()[:3], heads_q), q.device)
    block_sparse_fwd[(grid,)](
        dq, dk, dv, out, lse, kv_indices, records, hmap_qo, hmap_kv, geometry, n, num_q_blocks, batch,
        kv_indices.shape[-1], records.shape[0] * batch, int(store_lse), scale * 1.4426950408889634,
        HEAD_DIM=d, STAGES=stages, Q_BUFS=q_buffers(d, stages), num_warps=4, maxnreg=MAX_REGISTERS)


def _signature_type(desc) -> str:
    # PyPI's Triton names a descriptor's type through __mangle__; the lent H200's 3.6.0 build only
    # through the runtime's mangle_type.
    if hasattr(desc, "__mangle__"):
        return desc.__mangle__()
    from triton.runtime.jit import mangle_type

    return mangle_type(desc)


def compile_for_sm90(head_dim: int, dtype: str = "bf16", stages: int = 2):
    """Build the kernel for sm_90 without a GPU (CI; bench/compile_check.py): the compiled kernel."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    t = torch.zeros(1, 1, 256, head_dim, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
    dq, dk, dv = descriptors(t, t, t, tma_views(t, t, t))
    sig = {"q_desc": _signature_type(dq), "k_desc": _signature_type(dk), "v_desc": _signature_type(dv),
           "O": f"*{dtype}",
           "LSE": "*fp32", "KV_IDX": "*i32", "SCHED": "*i32", "HMAP_QO": "*i32", "HMAP_KV": "*i32", "G": "*i64",
           "N": "i32", "NQB": "i32", "B": "i32", "MAXW": "i32", "n_tiles": "i32", "store_lse": "i32",
           "qk_scale": "fp32", "HEAD_DIM": "constexpr", "STAGES": "constexpr", "Q_BUFS": "constexpr"}
    src = GluonASTSource(block_sparse_fwd, sig, constexprs={"HEAD_DIM": head_dim, "STAGES": stages,
                                                            "Q_BUFS": q_buffers(head_dim, stages)})
    return triton.compile(src, target=GPUTarget("cuda", 90, 128),
                          options={"num_warps": 4, "maxnreg": MAX_REGISTERS})
