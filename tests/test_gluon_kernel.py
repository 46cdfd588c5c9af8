"""The Gluon kernel (backend ``gluon``): what it refuses and why (any machine), that it
compiles for sm_90 without spills (any machine, in a fresh process), and that it matches float64
attention (Hopper GPU only: Gluon has no interpreter)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import sparsevdit as sv  # noqa: E402
from sparsevdit.kernels import BackendError, get_backend  # noqa: E402
from sparsevdit.kernels import gluon_backend as gb  # noqa: E402
from sparsevdit.kernels.registry import AttentionCall  # noqa: E402
from sparsevdit.patterns import num_blocks  # noqa: E402
from test_triton_kernel import _token_major, check, index_of_masks, random_mask, reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel runs on Hopper GPUs only")


def test_refusals_name_the_problem():
    q = torch.zeros(1, 2, 256, 128, dtype=torch.bfloat16)
    assert "share one shape" in gb.check_call(q, q[:, :1], q, 128)
    assert "float16 or bfloat16" in gb.check_call(q.float(), q.float(), q.float(), 128)
    assert "head_dim 96" in gb.check_call(*(torch.zeros(1, 2, 256, 96, dtype=torch.bfloat16),) * 3, 128)
    assert "block_size 64" in gb.check_call(q, q, q, 64)
    if not HOPPER:
        assert "Hopper GPU" in gb.check_call(q, q, q, 128)


def test_backend_is_opt_in():
    layout = sv.TokenLayout(2, 8, 16)
    pat = sv.patterns.build("diagonal", layout, block_size=128, width=128)
    call = AttentionCall(torch.device("cpu"), torch.bfloat16, 1, 2, layout.num_tokens, 128, (pat, pat), False)
    backend = get_backend("gluon")
    assert "triton" in backend.prefer_not(call)  # auto reaches it through backend triton only
    if not HOPPER:
        assert "Hopper GPU" in backend.cannot_run(call)
        q = torch.zeros(1, 2, layout.num_tokens, 128, dtype=torch.bfloat16)
        with pytest.raises(BackendError, match="gluon"):
            sv.sparse_attention(q, q, q, pat, layout=layout, backend="gluon")


def test_row_views_of_the_layouts_we_meet():
    # how TMA reads a [B, H, N, D] view in place: (rows, width, row stride, ROW_B, ROW_H, COL_H)
    from sparsevdit.kernels import gluon_kernel as gk

    t = torch.zeros(2, 3, 100, 128, dtype=torch.bfloat16)
    assert gk.row_view(t) == (600, 128, 128, 300, 100, 0)  # contiguous: [B*H*N, D]
    token_major = torch.zeros(2, 100, 3, 128, dtype=torch.bfloat16).transpose(1, 2)
    assert gk.row_view(token_major) == (200, 384, 384, 100, 0, 128)  # diffusers: [B*N, H*D]
    fused = torch.zeros(2, 100, 3, 3, 128, dtype=torch.bfloat16)[:, :, 1].transpose(1, 2)  # a fused-QKV chunk
    assert gk.row_view(fused) == (200, 384, 1152, 100, 0, 128)
    assert gk.row_view(t[:1, 1:]) == (200, 128, 128, 0, 100, 0)  # a head slice of batch 1
    assert gk.row_view(t.transpose(2, 3)) is None  # no unit last stride: the launcher copies
    odd = torch.zeros(1, 2, 100, 129, dtype=torch.bfloat16)[..., :128]  # rows of 258 bytes: not TMA-aligned
    assert gk.row_view(odd) is None


def test_compiles_for_sm90_without_spills():
    # a fresh process without TRITON_INTERPRET (other test modules switch this one to the interpreter)
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'bench' / 'probes')!r}]\n"
        "from sparsevdit.kernels import gluon_kernel as gk\n"
        "from compile_check import cubin_resources\n"
        "for d in (128, 64):\n"
        "    for dt in ('bf16', 'fp16'):\n"
        "        k = gk.compile_for_sm90(d, dt)\n"
        "        ptx = k.asm['ptx']\n"
        "        print(json.dumps(dict(head_dim=d, dtype=dt, shared=k.metadata.shared, wgmma=ptx.count('wgmma.mma_async'),\n"
        "                              setmaxnreg=ptx.count('setmaxnreg'), **cubin_resources(k.asm['cubin']))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    for row in rows:
        # three partitions with register reallocation, async wgmma, one CTA per SM (228 KB of shared memory)
        assert row["wgmma"] > 0 and row["setmaxnreg"] > 0 and row["shared"] <= 228 * 1024, row
        if "stack_bytes" in row:
            assert row["stack_bytes"] == 0 and row["registers"] <= 168, row


@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("n", [600, 1024])  # 600: a partial last block (query rows and keys)
def test_matches_float64_attention(dtype, dim, n):
    nb = num_blocks(n, 128)
    masks = torch.stack([random_mask(nb, 0.5, 81, empty_rows=[1], dense_rows=[0]), random_mask(nb, 0.3, 82),
                         torch.ones(nb, nb, dtype=torch.bool)])
    masks[1, :, -1] = True  # the partial last key block kept everywhere in one head
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, n, dim, generator=gen).to("cuda", dtype) for _ in range(3))
    index = index_of_masks(masks, 128, n, device="cuda")
    out, lse = gb.gluon_block_sparse_attention(q, k, v, index, dim ** -0.5, return_lse=True)
    for b in range(2):
        ref_out, ref_lse = reference(q[b:b + 1].cpu(), k[b:b + 1].cpu(), v[b:b + 1].cpu(), masks, 128, dim ** -0.5)
        check(out[b:b + 1].cpu(), lse[b:b + 1].cpu(), ref_out, ref_lse, dtype)


@hopper_only
@pytest.mark.parametrize("permuted", [False, True], ids=["in_order", "reordered"])
def test_in_place_head_group(permuted):
    # a head group of a [B, N, H, D]-backed layer (diffusers), written in place; other heads untouched
    batch, total, n, dim = 2, 5, 300, 64
    group = [1, 3, 4]
    gen = torch.Generator().manual_seed(31)
    q, k, v = _token_major(batch, total, n, dim, torch.float16, gen)
    nb = num_blocks(n, 128)
    masks = torch.stack([random_mask(nb, 0.5, 40, empty_rows=[1]), random_mask(nb, 1.0, 41),
                         random_mask(nb, 0.3, 42, dense_rows=[0])])
    index = index_of_masks(masks, 128, n, device="cuda")
    perm = torch.randperm(n, generator=gen) if permuted else None
    out = torch.full_like(q, 7.0)
    lse = torch.full((batch, total, n), 5.0, dtype=torch.float32, device="cuda")
    gb.gluon_block_sparse_attention(q, k, v, index, dim ** -0.5, return_lse=True,
                                    heads=torch.tensor(group, device="cuda"),
                                    perm=perm.cuda() if permuted else None, out=out, lse=lse)
    order_tok = perm if permuted else torch.arange(n)
    qg, kg, vg = (t.cpu()[:, group][:, :, order_tok] for t in (q, k, v))
    ref_out, ref_lse = reference(qg, kg, vg, masks, 128, dim ** -0.5)
    check(out.cpu()[:, group][:, :, order_tok], lse.cpu()[:, group][:, :, order_tok], ref_out, ref_lse, torch.float16)
    others = [h for h in range(total) if h not in group]
    assert (out.cpu()[:, others] == 7.0).all() and (lse.cpu()[:, others] == 5.0).all()


@hopper_only
@pytest.mark.parametrize("grid", ["tile", "persistent"])
def test_both_launch_forms_agree(grid):
    n = 1000
    nb = num_blocks(n, 128)
    masks = torch.stack([random_mask(nb, 0.4, 90 + h, empty_rows=[2]) for h in range(4)])
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 4, n, 128, generator=gen).to("cuda", torch.bfloat16) for _ in range(3))
    index = index_of_masks(masks, 128, n, device="cuda")
    out, lse = gb.gluon_block_sparse_attention(q, k, v, index, return_lse=True, persistent=grid == "persistent")
    ref_out, ref_lse = reference(q.cpu(), k.cpu(), v.cpu(), masks, 128, 128 ** -0.5)
    check(out.cpu(), lse.cpu(), ref_out, ref_lse, torch.bfloat16)


@hopper_only
def test_sparse_attention_through_the_backend():
    layout = sv.TokenLayout(3, 10, 20)  # 600 tokens
    pats = [sv.patterns.build("diagonal", layout, block_size=128, width=200),
            sv.patterns.build("dense", layout, block_size=128)]
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    got = sv.sparse_attention(q, k, v, pats, layout=layout, backend="gluon")
    ref = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference")
    assert float((got.float() - ref.float()).norm() / ref.float().norm()) < 1.5e-2


def test_triton_backend_picks_its_kernel_by_list_length():
    # backend triton runs a head group of long lists on the Gluon kernel (Hopper only), the rest on the tl kernel
    from sparsevdit.kernels import triton_backend as tb
    from sparsevdit.kernels import triton_sparse as ts

    device = "cuda" if HOPPER else "cpu"
    n = 80 * 128
    nb = num_blocks(n, 128)
    q = torch.zeros(1, 2, n, 128, dtype=torch.bfloat16, device=device)
    dense = index_of_masks(torch.ones(2, nb, nb, dtype=torch.bool), 128, n, device=device)
    sparse = index_of_masks(torch.stack([random_mask(nb, 0.3, 3)] * 2), 128, n, device=device)
    assert dense.mean_list_length == nb >= tb.gluon_min_blocks > sparse.mean_list_length
    assert tb.kernel_for(q, q, q, sparse) is ts.block_sparse_attention
    expected = gb.gluon_block_sparse_attention if HOPPER else ts.block_sparse_attention
    assert tb.kernel_for(q, q, q, dense) is expected
    assert tb.kernel_for(q[..., :96], q[..., :96], q[..., :96], dense) is ts.block_sparse_attention  # no Gluon D 96
    q64 = q[..., :64]
    assert tb.kernel_for(q64, q64, q64, dense) is ts.block_sparse_attention  # head_dim 64: not timed on Gluon yet


def test_auto_sends_long_dense_heads_to_the_gluon_kernel_on_hopper():
    # a mixed layer's dense heads: cuDNN (sdpa) unless the triton backend would run them on the Gluon kernel
    from sparsevdit.kernels.registry import select_backend

    layout = sv.TokenLayout(10, 32, 32)  # 10,240 tokens: 80 key blocks of 128
    dense = sv.patterns.build("dense", layout, block_size=128)
    device = torch.device("cuda" if HOPPER else "cpu")
    call = AttentionCall(device, torch.bfloat16, 1, 2, layout.num_tokens, 128, (dense, dense), False)
    assert select_backend("auto", call).name == ("triton" if HOPPER else "sdpa")
    short = sv.TokenLayout(2, 16, 16)  # 4 key blocks: cuDNN everywhere
    dense_short = sv.patterns.build("dense", short, block_size=128)
    call = AttentionCall(device, torch.bfloat16, 1, 1, short.num_tokens, 128, (dense_short,), False)
    assert select_backend("auto", call).name == "sdpa"


def test_older_triton_is_refused_by_name(monkeypatch):
    import triton

    monkeypatch.setattr(triton, "__version__", "3.5.1")
    monkeypatch.setattr(gb.ts, "interpret_mode", lambda: False)
    assert gb.triton_version() == (3, 5)
    assert "Triton >= 3.6" in gb.gluon_missing()
    monkeypatch.setattr(triton, "__version__", "3.10.0+git1234")
    assert gb.triton_version() == (3, 10)


def test_geometry_array_is_made_once_per_layout():
    from sparsevdit.kernels import gluon_kernel as gk

    a = gk.geometry_tensor((0, 100, 0, 0, 100, 0, 12800, 128, 128, 2), torch.device("cpu"))
    assert a.dtype == torch.int64 and a.tolist() == [0, 100, 0, 0, 100, 0, 12800, 128, 128, 2]
    assert gk.geometry_tensor((0, 100, 0, 0, 100, 0, 12800, 128, 128, 2), torch.device("cpu")) is a


@hopper_only
def test_both_kernels_of_the_triton_backend_fill_one_layer():
    # what backend triton's run_into does for two head groups of one layer: the dense and the long-list
    # head on the Gluon kernel, the short-list head on the tl kernel, in place in [B, N, H, D] storage;
    # all against float64
    n, dim = 80 * 128 - 40, 128  # 80 key blocks, a partial last one
    nb = num_blocks(n, 128)
    masks = torch.stack([torch.ones(nb, nb, dtype=torch.bool), random_mask(nb, 0.9, 7), random_mask(nb, 0.1, 8)])
    gen = torch.Generator().manual_seed(9)
    q, k, v = _token_major(1, 3, n, dim, torch.bfloat16, gen)
    index = index_of_masks(masks[:2], 128, n, device="cuda")
    from sparsevdit.kernels import triton_backend as tb

    assert tb.kernel_for(q, k, v, index) is gb.gluon_block_sparse_attention
    out = torch.empty_like(q)
    lse = torch.empty(1, 3, n, dtype=torch.float32, device="cuda")
    for hs in ([0, 1], [2]):
        idx = index_of_masks(masks[hs], 128, n, device="cuda")
        tb.kernel_for(q, k, v, idx)(q, k, v, idx, dim ** -0.5, return_lse=True,
                                    heads=torch.tensor(hs, device="cuda", dtype=torch.int32), out=out, lse=lse)
    ref_out, ref_lse = reference(q.cpu(), k.cpu(), v.cpu(), masks, 128, dim ** -0.5)
    check(out.cpu(), lse.cpu(), ref_out, ref_lse, torch.bfloat16)
