"""The Triton block-sparse kernel against float64 references and the reference backend.

Without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before triton
is imported) at small sizes; with CUDA the same tests run the compiled kernel, plus full-size checks
marked ``gpu``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
# Triton chooses compiled or interpreted code when it is imported. If something imported it before
# this module could set TRITON_INTERPRET, the interpreter tests run in a fresh process instead.
_TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparsevdit as sv  # noqa: E402
from sparsevdit.kernels import get_backend  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402
from sparsevdit.kernels.registry import AttentionCall  # noqa: E402
from sparsevdit.patterns import BlockPattern, num_blocks  # noqa: E402

RUN_HERE = HAS_CUDA or not _TRITON_PREIMPORTED
here = pytest.mark.skipif(not RUN_HERE, reason="triton was imported before TRITON_INTERPRET could be set: see test_in_fresh_process")
DEVICE = "cuda" if HAS_CUDA else "cpu"
TOL = {torch.float16: 4e-3, torch.bfloat16: 1.5e-2}  # relative Frobenius error vs float64

# The warp-specialised config: interpreted on the CPU like any other (the in-kernel descriptor path); on
# a GPU the launcher refuses it unless ts.EXPERIMENTAL_WS_ENV is set (wrong lse of empty rows on the H100
# with Triton 3.6: test_gpu_warp_specialised_is_refused).
WS_CONFIG = ts.KernelConfig(128, 64, 4, 2, True, True, False)
ws_param = pytest.param(WS_CONFIG, id=WS_CONFIG.label(), marks=pytest.mark.skipif(
    HAS_CUDA, reason="refused on a GPU: see test_gpu_warp_specialised_is_refused"))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def random_mask(nb: int, density: float, seed: int, empty_rows=(), dense_rows=()) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(nb, nb, generator=gen) < density
    for r in empty_rows:
        mask[r] = False
    for r in dense_rows:
        mask[r] = True
    return mask


def pattern(layout, block_size, mask, tag) -> BlockPattern:
    # Caches are keyed by the index data itself; the tag only names the pattern in messages.
    return BlockPattern.from_block_mask("test_random", {"tag": tag}, layout, block_size, mask, "frame_major")


def layout_of(n: int) -> sv.TokenLayout:
    return sv.TokenLayout(1, 1, n)


def reference(q, k, v, masks, block_size, scale, window=None, alpha=1.0):
    """float64 attention with block masks [h, nb, nb] expanded to tokens; (out, lse)."""
    n = q.shape[2]
    tok = masks.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[:, :n, :n]
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if window is not None:
        idx = torch.arange(n)
        far = (idx[:, None] - idx[None, :]).abs() > window
        s = torch.where(far & (s > 0), s * alpha, s)
    s = s.masked_fill(~tok.to(s.device), float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = torch.nan_to_num(torch.exp(s - lse[..., None]))
    return w @ v.double(), lse


def rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def check(out, lse, ref_out, ref_lse, dtype):
    assert torch.isfinite(out).all(), "non-finite output"
    assert rel_err(out, ref_out) < TOL[dtype], rel_err(out, ref_out)
    if lse is not None:
        assert lse.dtype == torch.float32
        inf_ref = torch.isinf(ref_lse)
        assert torch.equal(torch.isinf(lse).cpu(), inf_ref.cpu())
        assert (lse.double() - ref_lse)[~inf_ref].abs().max() < 2e-2 if (~inf_ref).any() else True
        # rows with no kept key: zero output
        assert out.double()[inf_ref].abs().max() == 0 if inf_ref.any() else True


def index_of_masks(masks, block_size, n, device=DEVICE):
    """BlockIndex of block masks [h, nb, nb] (ascending lists)."""
    counts = masks.sum(-1).to(torch.int32)
    width = max(1, int(counts.max()))
    order = torch.sort((~masks).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    indices = torch.where(torch.arange(width) < counts[..., None], order, -1).to(torch.int32)
    return ts.index_from_tensors(indices.to(device), counts.to(device), block_size, n)


def run_kernel(masks, n, dim, dtype, block_size, heads=None, batch=1, seed=0, return_lse=True, **kw):
    heads = masks.shape[0]
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=gen).to(DEVICE, dtype) for _ in range(3))
    index = index_of_masks(masks, block_size, n)
    scale = 1.0 / math.sqrt(dim)
    out, lse = ts.block_sparse_attention(q, k, v, index, scale, return_lse=return_lse, **kw)
    ref_out, ref_lse = reference(q.cpu(), k.cpu(), v.cpu(), masks, block_size, scale,
                                 kw.get("distance_window"), kw.get("alpha", 1.0))
    return out.cpu(), (lse.cpu() if lse is not None else None), ref_out, ref_lse


# --------------------------------------------------------------------------------------------
# kernel vs float64 reference
# --------------------------------------------------------------------------------------------
@here
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,block_size", [(200, 64), (256, 128), (300, 128)])
def test_random_masks_with_empty_and_dense_rows(dtype, n, block_size):
    nb = num_blocks(n, block_size)
    masks = torch.stack([
        random_mask(nb, 0.5, 1, empty_rows=[1]),           # an empty query block
        random_mask(nb, 0.2, 2, dense_rows=[0]),
        torch.ones(nb, nb, dtype=torch.bool),               # all dense
    ])
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 64, dtype, block_size, seed=n)
    check(out, lse, ref_out, ref_lse, dtype)


@here
@pytest.mark.parametrize("density", [0.1, 0.3, 0.7])
def test_densities_batch_two(density):
    n, bs = 260, 64
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, density, 10 + h) for h in range(2)])
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 64, torch.float16, bs, batch=2, seed=3)
    check(out, lse, ref_out, ref_lse, torch.float16)


@here
def test_head_dim_128():
    n, bs = 190, 64
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.5, 5, empty_rows=[2]), random_mask(nb, 0.9, 6)])
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 128, torch.bfloat16, bs)
    check(out, lse, ref_out, ref_lse, torch.bfloat16)


@here
def test_without_lse():
    n, bs = 140, 64
    nb = num_blocks(n, bs)
    out, lse, ref_out, _ = run_kernel(random_mask(nb, 0.6, 7)[None], n, 64, torch.float16, bs, return_lse=False)
    assert lse is None
    assert rel_err(out, ref_out) < TOL[torch.float16]


@here
@pytest.mark.parametrize("window,alpha", [(40, 0.5), (0, 1.7), (1000, 0.0)])
def test_distance_hook(window, alpha):
    n, bs = 200, 64
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.6, 8, empty_rows=[3]), torch.ones(nb, nb, dtype=torch.bool)])
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 64, torch.float16, bs, distance_window=window, alpha=alpha)
    check(out, lse, ref_out, ref_lse, torch.float16)
    if window < n and alpha != 1.0:  # the hook changed something
        plain = reference(*(torch.randn(1, 2, n, 64, generator=torch.Generator().manual_seed(0)) for _ in range(3)),
                          masks, bs, 0.125)[0]
        hooked = reference(*(torch.randn(1, 2, n, 64, generator=torch.Generator().manual_seed(0)) for _ in range(3)),
                           masks, bs, 0.125, window, alpha)[0]
        assert rel_err(hooked, plain) > 1e-3


@here
@pytest.mark.parametrize("cfg", [
    ts.KernelConfig(64, 64, 4, 1, False, False),    # query tile half the block, key tile half the block
    ts.KernelConfig(128, 64, 4, 1, False, True),    # descriptor (TMA) path; key tile half the block
    ts.KernelConfig(128, 128, 4, 1, False, True),   # descriptor path, full tiles
    ts.KernelConfig(128, 128, 4, 1, False, True, False),  # descriptors built inside the kernel
    ts.KernelConfig(128, 64, 4, 1, False, True, one_loop=True),  # partial block in the TMA loop
    ws_param,  # warp specialised (on Hopper), in-kernel descriptors
    ts.KernelConfig(128, 64, 4, 2, False, True, persistent=True),  # persistent grid: programs loop over tiles
    ts.KernelConfig(64, 64, 4, 1, False, False, persistent=True),  # persistent, pointer path, half-block tiles
], ids=lambda c: c.label())
def test_tiles_and_descriptor_path(cfg):
    n, bs = 300, 128
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.5, 11, empty_rows=[0]), random_mask(nb, 0.8, 12)])
    masks[1, :, -1] = True  # the partial last key block kept everywhere
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 64, torch.float16, bs, config=cfg)
    check(out, lse, ref_out, ref_lse, torch.float16)


LAZY_CONFIGS = [
    ts.KernelConfig(64, 64, 4, 1, False, False, lazy_rescale=True),  # pointer path, stale running max
    ts.KernelConfig(128, 64, 4, 1, False, True, lazy_rescale=True),  # descriptor path, two key tiles a block
]


@here
@pytest.mark.parametrize("cfg", LAZY_CONFIGS, ids=lambda c: c.label())
@pytest.mark.parametrize("chunks", [1, 2])
def test_lazy_rescale_with_growing_logits(cfg, chunks):
    # The lazy rescale keeps a stale row max until some row's max grows by more than 2^8: logits that grow
    # along the keys (small steps under the threshold, one jump over it) exercise both branches.
    n, bs, dim = 600, 128, 64
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.7, 61, empty_rows=[1], dense_rows=[0]), random_mask(nb, 1.0, 62)])
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, dim, generator=gen) for _ in range(3))
    growth = 1 + torch.arange(n, dtype=torch.float32) / 100  # logits' spread grows ~7x along the keys
    growth[3 * bs: 4 * bs] *= 4  # one block whose logits jump far past the running max
    k = k * growth[:, None]
    q, k, v = (t.to(DEVICE, torch.float16) for t in (q, k, v))
    scale = 1.0 / math.sqrt(dim)
    out, lse = ts.block_sparse_attention(q, k, v, index_of_masks(masks, bs, n), scale, return_lse=True,
                                         config=cfg, kv_chunks=chunks)
    ref_out, ref_lse = reference(q.cpu(), k.cpu(), v.cpu(), masks, bs, scale)
    check(out.cpu(), lse.cpu(), ref_out, ref_lse, torch.float16)


# --------------------------------------------------------------------------------------------
# key chunks: one launch per contiguous key range, merged through the lse
# --------------------------------------------------------------------------------------------
@here
@pytest.mark.parametrize("cfg", [
    ts.KernelConfig(64, 64, 4, 1, False, False),    # pointer path
    ts.KernelConfig(128, 64, 4, 1, False, True),    # host descriptors (merge reads O through them)
    ts.KernelConfig(128, 64, 4, 1, False, True, False),  # in-kernel descriptors
    ts.KernelConfig(128, 64, 4, 2, False, True, persistent=True),  # persistent grid over fewer records
], ids=lambda c: c.label())
@pytest.mark.parametrize("chunks", [2, 3])
@pytest.mark.parametrize("return_lse", [True, False], ids=["lse", "no_lse"])
def test_key_chunks(cfg, chunks, return_lse):
    n, bs = 600, 128  # 5 key blocks, the last one partial
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.5, 51, empty_rows=[0], dense_rows=[2]), random_mask(nb, 0.3, 52)])
    masks[1, 3] = False
    masks[1, 3, 0] = True  # a row whose only key is in the first range
    masks[1, 4] = False
    masks[1, 4, -1] = True  # a row whose only key is the partial last block
    out, lse, ref_out, ref_lse = run_kernel(masks, n, 64, torch.float16, bs, config=cfg, kv_chunks=chunks,
                                            return_lse=return_lse)
    check(out, lse, ref_out, ref_lse, torch.float16)


@here
@pytest.mark.parametrize("cfg", [ts.KernelConfig(64, 64, 4, 1, False, False), ts.KernelConfig(128, 64, 4, 1, False, True)],
                         ids=lambda c: c.label())
def test_key_chunks_in_place_reordered(cfg):
    batch, total, n, dim, bs = 1, 3, 600, 64, 128
    gen = torch.Generator().manual_seed(61)
    q, k, v = _token_major(batch, total, n, dim, torch.float16, gen)
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.6, 62, empty_rows=[1]), random_mask(nb, 0.4, 63)])
    index = index_of_masks(masks, bs, n)
    perm = torch.randperm(n, generator=gen)
    group = [0, 2]
    out = torch.full_like(q, 7.0)
    scale = 1.0 / math.sqrt(dim)
    _, none = ts.block_sparse_attention(q, k, v, index, scale, config=cfg, heads=torch.tensor(group, device=DEVICE),
                                        perm=perm.to(DEVICE), out=out, kv_chunks=2)
    assert none is None
    qg, kg, vg = (t.cpu()[:, group][:, :, perm] for t in (q, k, v))
    ref_out, _ = reference(qg, kg, vg, masks, bs, scale)
    check(out.cpu()[:, group][:, :, perm], None, ref_out, None, torch.float16)
    assert (out.cpu()[:, 1] == 7.0).all()


def test_chunk_records():
    # 1 head x 4 query blocks over 500 tokens (the last block partial), two key ranges: blocks 0-1, 2-3
    lists = torch.tensor([[[0, 3, 0], [1, 2, 3], [0, 0, 0], [2, 0, 0]]], dtype=torch.int32)
    counts = torch.tensor([[2, 3, 0, 1]], dtype=torch.int32)
    first, second = (r.cpu().tolist() for r in ts.index_from_tensors(lists, counts, 128, 500).chunk_records(2))
    # (item, slice length, flags, slice start): the empty item runs once, in the first launch
    assert first == [[0, 1, 0, 0], [1, 1, 0, 0], [2, 0, 0, 0]]
    merge, tail = ts.REC_MERGE, ts.REC_TAIL
    assert second == [[1, 2, merge | tail, 1], [0, 1, merge | tail, 1], [3, 1, 0, 0]]
    whole = ts.index_from_tensors(lists, counts, 128, 500).chunk_records(1)[0].cpu().tolist()
    assert whole == [[1, 3, tail, 0], [0, 2, tail, 0], [3, 1, 0, 0], [2, 0, 0, 0]]


def test_head_footprints_and_auto_chunks(monkeypatch):
    nb = 8
    dense = torch.ones(1, nb, nb, dtype=torch.bool)
    band = (torch.arange(nb)[:, None] - torch.arange(nb)[None, :]).abs() <= 1
    index = index_of_masks(torch.cat([dense, band[None]]), 128, nb * 128, device="cpu")
    # two programs in flight: a dense head's pairs touch all 8 blocks; the band's pairs in launch order
    # (longest lists first: rows 1-6, then 0 and 7) touch 4 each
    assert index.head_footprints(2).tolist() == [8.0, 4.0]
    assert index.head_footprints(nb).tolist() == [8.0, 8.0]
    wide = 16
    band16 = (torch.arange(wide)[:, None] - torch.arange(wide)[None, :]).abs() <= 1
    text_row = band16.clone()
    text_row[-1] = True  # a row over every key (a text query block): launched first, counted in its head
    long_index = index_of_masks(torch.stack([band16, text_row]), 128, wide * 128, device="cpu")
    assert long_index.launch_records()[0, 0].item() == 2 * wide - 1
    band_fp, text_fp = long_index.head_footprints(2).tolist()
    assert band_fp == 4.0 and 4.0 < text_fp < wide  # the pair holding the text row touches all 16
    assert ts.auto_kv_chunks(index, 128, 2, torch.device("cpu")) == 1  # only on a GPU
    monkeypatch.setenv(ts.KV_CHUNKS_ENV, "three")
    with pytest.raises(ValueError, match="SPARSEVDIT_KV_CHUNKS='three'"):
        ts.block_sparse_attention(*(torch.zeros(1, 2, nb * 128, 64, device=DEVICE, dtype=torch.float16) for _ in range(3)),
                                  index_of_masks(torch.cat([dense, band[None]]), 128, nb * 128))
    monkeypatch.delenv(ts.KV_CHUNKS_ENV)
    with pytest.raises(ValueError, match="kv_chunks"):
        ts.block_sparse_attention(*(torch.zeros(1, 2, nb * 128, 64, device=DEVICE, dtype=torch.float16) for _ in range(3)),
                                  index_of_masks(torch.cat([dense, band[None]]), 128, nb * 128), kv_chunks=0)


def test_auto_kv_chunks_rule(monkeypatch):
    class Props:  # a GPU whose L2 holds 64 of these 64 KB K/V blocks (head_dim 128, bf16)
        L2_cache_size = 4 * 2**20
        multi_processor_count = 32

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    cuda = torch.device("cuda")
    nb = 96  # a head's K/V: 6 MB, over half the L2
    chunks = lambda masks: ts.auto_kv_chunks(index_of_masks(masks, 128, nb * 128, device="cpu"), 128, 2, cuda)  # noqa: E731
    dense_index = index_of_masks(torch.ones(1, nb, nb, dtype=torch.bool), 128, nb * 128, device="cpu")
    assert ts.auto_kv_chunks(dense_index, 128, 2, cuda) == 1  # dense: programs read in step
    assert not any(k[0] == "footprint" for k in dense_index._schedules)  # decided without the footprint
    assert chunks(random_mask(nb, 0.5, 1)[None]) == 3  # scattered: 6 MB / 2 MB
    assert chunks(random_mask(nb, 0.2, 2)[None]) == 1  # ~19 blocks a row: slices would be too short
    small = 48  # 3 MB a head: 2 ranges (rows of ~29 blocks)
    assert ts.auto_kv_chunks(index_of_masks(random_mask(small, 0.6, 3)[None], 128, small * 128, device="cpu"),
                             128, 2, cuda) == 2


# --------------------------------------------------------------------------------------------
# in place: a head group of token-major [B, N, H, D] tensors, with a token reordering
# --------------------------------------------------------------------------------------------
def _token_major(batch, heads, n, dim, dtype, gen):
    """[B, H, N, D] views of [B, N, H, D] storage, as diffusers' processors hold q/k/v."""
    return [torch.randn(batch, n, heads, dim, generator=gen).to(DEVICE, dtype).transpose(1, 2) for _ in range(3)]


@here
@pytest.mark.parametrize("cfg", [
    ts.KernelConfig(64, 64, 4, 1, False, False),    # pointer path
    ts.KernelConfig(128, 64, 4, 1, False, True),    # descriptor (TMA) path over the strided views
    ts.KernelConfig(128, 64, 4, 1, False, True, False),  # 2-D per-head descriptors built in the kernel
    ws_param,  # warp specialised on Hopper (unspecialised if reordered)
    ts.KernelConfig(128, 32, 4, 2, False, True, persistent=True),  # persistent grid over the strided views
], ids=lambda c: c.label())
@pytest.mark.parametrize("permuted", [False, True], ids=["frame_order", "reordered"])
def test_in_place_head_group(cfg, permuted):
    batch, total, n, dim, bs = 2, 5, 300, 64, 128
    group = [1, 3, 4]
    gen = torch.Generator().manual_seed(31)
    q, k, v = _token_major(batch, total, n, dim, torch.float16, gen)
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, 0.5, 40, empty_rows=[1]), random_mask(nb, 1.0, 41),
                         random_mask(nb, 0.3, 42, dense_rows=[0])])
    index = index_of_masks(masks, bs, n)
    perm = torch.randperm(n, generator=gen) if permuted else None
    out = torch.full_like(q, 7.0)  # heads outside the group must stay untouched
    assert out.stride() == q.stride()
    lse = torch.full((batch, total, n), 5.0, dtype=torch.float32, device=DEVICE)
    scale = 1.0 / math.sqrt(dim)
    ts.block_sparse_attention(q, k, v, index, scale, return_lse=True, config=cfg,
                              heads=torch.tensor(group, device=DEVICE),
                              perm=perm.to(DEVICE) if permuted else None, out=out, lse=lse)
    order_tok = perm if permuted else torch.arange(n)
    qg, kg, vg = (t.cpu()[:, group][:, :, order_tok] for t in (q, k, v))
    ref_out, ref_lse = reference(qg, kg, vg, masks, bs, scale)
    got = out.cpu()[:, group][:, :, order_tok]
    got_lse = lse.cpu()[:, group][:, :, order_tok]
    check(got, got_lse, ref_out, ref_lse, torch.float16)
    others = [h for h in range(total) if h not in group]
    assert (out.cpu()[:, others] == 7.0).all() and (lse.cpu()[:, others] == 5.0).all()


@here
def test_in_place_arguments_are_checked():
    n, bs = 128, 64
    masks = torch.ones(2, 2, 2, dtype=torch.bool)
    index = ts.index_from_tensors(torch.tensor([[[0, 1]] * 2] * 2, dtype=torch.int32), masks.sum(-1).int(), bs, n)
    q = torch.zeros(1, 3, n, 64, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="3 heads but the index has 2"):
        ts.block_sparse_attention(q, q, q, index)
    with pytest.raises(ValueError, match="1 heads given but the index has 2"):
        ts.block_sparse_attention(q, q, q, index, heads=torch.tensor([0]))
    with pytest.raises(ValueError, match="perm has 5 entries for 128 tokens"):
        ts.block_sparse_attention(q, q, q, index, heads=torch.tensor([0, 2]), perm=torch.arange(5))
    with pytest.raises(ValueError, match="out must be"):
        ts.block_sparse_attention(q, q, q, index, heads=torch.tensor([0, 2]), out=q[:, :2])
    with pytest.raises(ValueError, match="lse must be"):
        ts.block_sparse_attention(q, q, q, index, heads=torch.tensor([0, 2]), return_lse=True,
                                  lse=torch.zeros(1, 3, n + 1, device=DEVICE))
    with pytest.raises(ValueError, match="out shares memory with q, k or v"):
        ts.block_sparse_attention(q, q.clone(), q.clone(), index, heads=torch.tensor([0, 2]), out=q)


@here
def test_gather_heads_rows():
    gen = torch.Generator().manual_seed(5)
    src = torch.randn(2, 70, 4, 64, generator=gen).to(DEVICE, torch.bfloat16).transpose(1, 2)
    heads = torch.tensor([3, 0], device=DEVICE, dtype=torch.int32)
    perm = torch.randperm(70, generator=gen).to(DEVICE, torch.int32)
    got = ts.gather_heads_rows(src, heads, perm)
    assert got.is_contiguous() and torch.equal(got, src[:, heads.long()][:, :, perm.long()])
    assert torch.equal(ts.gather_heads_rows(src, heads, None), src[:, heads.long()])


# --------------------------------------------------------------------------------------------
# through sparse_attention, against the reference backend
# --------------------------------------------------------------------------------------------
@here
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("token_major", [False, True], ids=["contiguous", "token_major"])
@pytest.mark.parametrize("kv_chunks", [None, "3"], ids=["auto_chunks", "env_3_chunks"])
def test_sparse_attention_vs_reference_backend(dtype, token_major, kv_chunks, monkeypatch):
    if kv_chunks:  # the user-level override reaches every group's launches (head map, reordering)
        monkeypatch.setenv(ts.KV_CHUNKS_ENV, kv_chunks)
    layout = sv.TokenLayout(3, 6, 10, text_tokens=20, text_position="prefix")  # 200 tokens
    bs = 64
    pats = [
        sv.patterns.build("diagonal", layout, block_size=bs, width=60),
        sv.patterns.build("vertical_stripe", layout, block_size=bs, sink_frames=1),
        sv.patterns.build("dense", layout, block_size=bs),
        sv.patterns.build("skip", layout, block_size=bs),
        sv.patterns.build("multi_diagonal", layout, block_size=bs, width=30),
    ]
    gen = torch.Generator().manual_seed(4)
    if token_major:
        q, k, v = _token_major(1, len(pats), layout.num_tokens, 64, dtype, gen)
    else:
        q, k, v = (torch.randn(1, len(pats), layout.num_tokens, 64, generator=gen).to(DEVICE, dtype) for _ in range(3))
    out, lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="triton", return_lse=True)
    if token_major:  # written in q's layout, so the processor's transpose back is free
        assert out.stride() == q.stride()
    ref, ref_lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference", return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel_err(out.cpu(), ref.cpu().double()) < TOL[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert (lse - ref_lse)[finite].abs().max() < 2e-2
    assert out[:, 3].abs().max() == 0  # the skip head


# --------------------------------------------------------------------------------------------
# hostile inputs: one recipe with two masks, NaN and infinity (tests/test_bad_input_kernels.py)
# --------------------------------------------------------------------------------------------
NONFINITE = [(w, x) for w in "qkv" for x in (math.nan, math.inf, -math.inf)]


@here
@pytest.mark.parametrize("backend", ["triton", "gluon"] if HAS_CUDA else ["triton"])
def test_index_cache_never_returns_another_masks_result(backend):
    if backend == "gluon" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel runs on Hopper GPUs only")
    layout, bs, dim = layout_of(600), 128, 128
    nb = num_blocks(600, bs)
    a = BlockPattern.from_block_mask("same", {}, layout, bs, torch.eye(nb, dtype=torch.bool), "frame_major")
    b = BlockPattern.from_block_mask("same", {}, layout, bs, torch.ones(nb, nb, dtype=torch.bool).tril(), "frame_major")
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 600, dim, generator=gen).to(DEVICE, torch.float16) for _ in range(3))
    for p in (a, b, a):
        got = sv.sparse_attention(q, k, v, p, layout=layout, backend=backend)
        want = sv.sparse_attention(q, k, v, p, layout=layout, backend="reference")
        assert rel_err(got.cpu(), want.cpu().double()) < TOL[torch.float16]


@here
@pytest.mark.parametrize("backend", ["triton", "gluon"] if HAS_CUDA else ["triton"])
@pytest.mark.parametrize("where, value", NONFINITE, ids=[f"{w}-{x}" for w, x in NONFINITE])
def test_nonfinite_inputs_propagate_like_reference(backend, where, value):
    from test_bad_input_kernels import assert_matches_reference

    if backend == "gluon" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel runs on Hopper GPUs only")
    layout = sv.TokenLayout(2, 10, 30)  # 600 tokens: 4 full blocks of 128 and a partial one
    pats = [sv.patterns.build("diagonal", layout, block_size=128, width=256),
            sv.patterns.build("random_blocks", layout, block_size=128, density=0.4, seed=1)]
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 600, 128, generator=gen).to(torch.float16) for _ in range(3))
    t = {"q": q, "k": k, "v": v}[where]
    t[0, 0, 5, 3] = value  # key block 0: only some query blocks keep it
    t[0, 1, 590, 0] = value  # the partial last block
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    out, lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend=backend, return_lse=True)
    ref, ref_lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference", return_lse=True)
    assert_matches_reference(out.cpu().float(), ref.cpu().float(), atol=2e-2)
    # a row with a +inf score: the reference's logsumexp says inf, an online softmax NaN (inf - inf)
    assert torch.equal(torch.isfinite(lse.cpu()), torch.isfinite(ref_lse.cpu()))


# --------------------------------------------------------------------------------------------
# plumbing
# --------------------------------------------------------------------------------------------
def _call(dtype=torch.float16, head_dim=64, block_size=64, device="cpu"):
    layout = layout_of(100)
    p = sv.patterns.build("dense", layout, block_size=block_size)
    return AttentionCall(torch.device(device), dtype, 1, 1, 100, head_dim, (p,), False)


@here
def test_cannot_run_reasons(monkeypatch):
    backend = get_backend("triton")
    dev = DEVICE
    assert backend.cannot_run(_call(device=dev)) is None
    assert "float16 or bfloat16" in backend.cannot_run(_call(torch.float32, device=dev))
    assert "head_dim 96" in backend.cannot_run(_call(head_dim=96, device=dev))
    assert "block_size 32" in backend.cannot_run(_call(block_size=32, device=dev))
    grad_call = AttentionCall(torch.device(dev), torch.float16, 1, 1, 100, 64, _call().patterns, False, True)
    assert "backward" in backend.cannot_run(grad_call)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA" in backend.cannot_run(_call(device="cpu"))
    if not HAS_CUDA:
        assert backend.prefer_not(_call(device="cpu")) is not None  # auto never picks the interpreter


def test_schedule_orders():
    counts = torch.tensor([[1, 5, 3], [4, 0, 6]], dtype=torch.int32)
    assert ts.make_schedule(counts, "head").tolist() == [1, 2, 0, 5, 3, 4]
    assert ts.make_schedule(counts, "lpt").tolist() == [5, 1, 3, 2, 0, 4]
    assert ts.make_schedule(counts, "natural").tolist() == [0, 1, 2, 3, 4, 5]
    assert ts.make_schedule(counts, "head_strict").tolist() == [1, 2, 0, 5, 3, 4]
    # long lists (> 3 x the mean, like text rows over every key) start first, over all heads
    text = torch.tensor([[1, 1, 10], [1, 1, 1], [1, 12, 1]], dtype=torch.int32)
    assert ts.make_schedule(text, "head").tolist() == [7, 2, 0, 1, 3, 4, 5, 6, 8]
    assert ts.make_schedule(text, "head_strict").tolist() == [2, 0, 1, 3, 4, 5, 7, 6, 8]
    with pytest.raises(ValueError, match="unknown schedule"):
        ts.make_schedule(text, "longest")


@here
def test_launch_records():
    # 2 heads x 3 query blocks over 300 tokens (block 128: the last block is partial)
    lists = torch.tensor([[[0, 2, 0], [1, 0, 0], [0, 1, 2]], [[2, 0, 0], [0, 0, 0], [0, 1, 0]]], dtype=torch.int32)
    counts = torch.tensor([[2, 1, 3], [1, 0, 2]], dtype=torch.int32)
    rec = ts.index_from_tensors(lists, counts, 128, 300).launch_records("head").cpu()
    # head-major, longest list first in each head: (item, count, ends with the partial block, 0)
    assert rec.tolist() == [[2, 3, 1, 0], [0, 2, 1, 0], [1, 1, 0, 0], [5, 2, 0, 0], [3, 1, 1, 0], [4, 0, 0, 0]]
    even = ts.index_from_tensors(lists, counts, 128, 384).launch_records("head").cpu()
    assert even[:, 2].tolist() == [0] * 6  # no partial block when N is a multiple of the block


def test_index_cache_per_patterns():
    layout = layout_of(300)
    a = sv.patterns.build("diagonal", layout, block_size=64, width=100)
    b = sv.patterns.build("dense", layout, block_size=64)
    ia = ts.block_index_for((a, b), torch.device("cpu"))
    assert ts.block_index_for((a, b), torch.device("cpu")) is ia
    assert ia.kv_indices.shape == (2, 5, 5) and ia.kv_counts.tolist()[1] == [5] * 5
    assert int(ia.kv_indices.min()) >= 0  # padding is never -1 (never read, but stays in bounds)


@pytest.mark.skipif(RUN_HERE, reason="runs only when triton was imported before this module")
def test_in_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# GPU: full-size correctness
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (on the CPU the config runs interpreted above)")
def test_gpu_warp_specialised_is_refused(monkeypatch):
    monkeypatch.delenv(ts.EXPERIMENTAL_WS_ENV, raising=False)
    masks = torch.ones(1, 2, 2, dtype=torch.bool)
    if not ts.hopper_features(torch.device("cuda")):
        pytest.skip("warp specialisation is only attempted on Hopper")
    with pytest.raises(ValueError, match=ts.EXPERIMENTAL_WS_ENV):
        run_kernel(masks, 256, 64, torch.float16, 128, config=WS_CONFIG)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("kv_chunks", [None, 3], ids=["auto_chunks", "3_chunks"])
def test_gpu_large(dtype, dim, kv_chunks):
    n, bs = 4100, 128
    nb = num_blocks(n, bs)
    masks = torch.stack([random_mask(nb, d, 20 + i, empty_rows=[3]) for i, d in enumerate((0.1, 0.5, 1.0))])
    out, lse, ref_out, ref_lse = run_kernel(masks, n, dim, dtype, bs, kv_chunks=kv_chunks)
    check(out, lse, ref_out, ref_lse, dtype)


# UltraViCo's logit damping through sparse_attention (the kernel's distance transform) --------------------
@here
@pytest.mark.parametrize("bar", [True, False])
def test_triton_kernel_applies_the_damping_as_the_reference(bar):
    from sparsevdit import patterns as P
    from sparsevdit.kernels import BackendError
    from sparsevdit.kernels.damping import LogitDamping

    device = DEVICE
    layout = sv.TokenLayout(4, 4, 10, text_tokens=5, text_position="prefix")  # 165 tokens, blocks of 64
    d = LogitDamping(window=45, alpha=0.4, bar_first_frame=bar)
    q, k, v = (t.to(device, torch.float16) for t in [torch.randn(1, 2, layout.num_tokens, 64, generator=torch.Generator().manual_seed(s)) * 2 for s in range(3)])
    pats = [P.build("diagonal", layout, block_size=64, width=100), P.build("dense", layout, block_size=64)]
    ref, ref_lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference", damping=d, return_lse=True)
    out, lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="triton", damping=d, return_lse=True)
    err = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert torch.isfinite(out).all() and err < 2e-2, err
    assert torch.equal(torch.isinf(lse).cpu(), torch.isinf(ref_lse).cpu())
    multi = P.build("multi_diagonal", layout, block_size=64, width=40)
    with pytest.raises(BackendError, match="position_major head group"):
        sv.sparse_attention(q, k, v, [multi, multi], layout=layout, backend="triton", damping=d)


# --------------------------------------------------------------------------------------------
# a dynamic method's device index (BlockSelection), run as it comes
# --------------------------------------------------------------------------------------------
def _selection(layout, bs, heads, seed, empty=()):
    """topk's selection on random q/k, with the given (head, query block) rows emptied by hand."""
    from sparsevdit.methods.topk import TopKParams, select

    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, layout.num_tokens, 64, generator=gen).to(DEVICE, torch.float16) for _ in range(3))
    counts, indices = select(q.float(), k.float(), layout, bs, TopKParams(tau=0.4, keep_text=False))
    for h, i in empty:
        counts[h, i] = 0
        indices[h, i] = -1
    return q, k, v, sv.patterns.BlockSelection(layout, bs, counts, indices, name="topk")


def test_device_schedule_and_records_equal_the_host_ones():
    # lists of one block size hold at most nq blocks: the bound the sync-free sort key uses
    counts = torch.tensor([[1, 5, 3, 0, 2, 2], [4, 0, 6, 1, 1, 1], [1, 1, 1, 6, 1, 1]], dtype=torch.int32)
    for kind in ("head", "head_strict", "lpt", "natural"):
        assert torch.equal(ts.make_schedule(counts, kind, sync_free=True), ts.make_schedule(counts, kind))
    lists = torch.tensor([[[0, 2, -1], [1, -1, -1], [0, 1, 2]], [[2, -1, -1], [-1, -1, -1], [0, 1, -1]]], dtype=torch.int32)
    small = torch.tensor([[2, 1, 3], [1, 0, 2]], dtype=torch.int32)
    for n in (300, 384):  # a partial last block, and none
        dev = ts.index_on_device(lists, small, 128, n)
        host = ts.index_from_tensors(lists, small, 128, n)
        assert dev.on_device_only and not host.on_device_only
        assert torch.equal(dev.launch_records("head"), host.launch_records("head"))
        assert torch.equal(dev.kv_indices, host.kv_indices)
    with pytest.raises(ValueError, match="one key range"):
        dev.chunk_records(2)
    with pytest.raises(ValueError, match="not read on the host"):
        dev.mean_list_length


@here
@pytest.mark.parametrize("return_lse", [True, False])
def test_a_selection_runs_on_the_kernel_as_it_comes(return_lse, monkeypatch):
    """The Triton backend takes the selection's tensors (no host index: the host paths are broken here)
    and equals the reference backend on its BlockPatterns, text prefix, partial last block, empty rows."""
    layout = sv.TokenLayout(3, 6, 10, text_tokens=20, text_position="prefix")  # 200 tokens, 4 blocks of 64
    q, k, v, sel = _selection(layout, 64, 3, seed=5, empty=[(1, 2), (2, 3)])
    ref = sv.sparse_attention(q, k, v, sel.to_patterns(), layout=layout, backend="reference", return_lse=True)

    def no_host_index(*a, **kw):
        raise AssertionError("a selection must not go through a host-built index")

    monkeypatch.setattr(ts, "block_index_for", no_host_index)
    monkeypatch.setattr(ts, "index_from_tensors", no_host_index)
    monkeypatch.setenv(ts.KV_CHUNKS_ENV, "3")  # the tuning knob does not reach a device-only index
    got = sv.sparse_attention(q, k, v, sel, layout=layout, backend="triton", return_lse=return_lse)
    out, lse = got if return_lse else (got, None)
    assert rel_err(out.cpu(), ref[0].cpu().double()) < TOL[torch.float16]
    assert out[0, 1, 128:192].abs().max() == 0 and out[0, 2, 192:].abs().max() == 0  # the emptied rows
    if return_lse:
        finite = torch.isfinite(ref[1])
        assert torch.equal(finite.cpu(), torch.isfinite(lse).cpu())
        assert (lse - ref[1])[finite].abs().max() < 2e-2


@here
def test_a_selection_with_damping_on_the_kernel_equals_the_reference():
    from sparsevdit.kernels.damping import LogitDamping

    layout = sv.TokenLayout(3, 6, 10)  # 180 tokens
    q, k, v, sel = _selection(layout, 64, 2, seed=6)
    damping = LogitDamping(window=40, alpha=0.5)
    got = sv.sparse_attention(q, k, v, sel, layout=layout, backend="triton", damping=damping)
    want = sv.sparse_attention(q, k, v, sel.to_patterns(), layout=layout, backend="reference", damping=damping)
    assert rel_err(got.cpu(), want.cpu().double()) < TOL[torch.float16]


def test_a_selection_runs_as_patterns_on_other_backends():
    layout = sv.TokenLayout(2, 6, 10, text_tokens=7, text_position="suffix")
    q, k, v, sel = _selection(layout, 64, 2, seed=7)
    q, k, v = (t.cpu().float() for t in (q, k, v))
    sel = sv.patterns.BlockSelection(layout, 64, sel.counts.cpu(), sel.indices.cpu())
    want = sv.sparse_attention(q, k, v, sel.to_patterns(), layout=layout, backend="reference")
    for backend in ("auto", "reference", "blockwise"):  # auto on a CPU: never the interpreter
        torch.testing.assert_close(sv.sparse_attention(q, k, v, sel, layout=layout, backend=backend), want)
    with pytest.raises(ValueError, match="heads"):
        sv.sparse_attention(q[:, :1], k[:, :1], v[:, :1], sel, layout=layout)
    with pytest.raises(ValueError, match="layout"):
        sv.sparse_attention(q, k, v, sel, layout=sv.TokenLayout(2, 6, 10, text_tokens=7, text_position="prefix"))
