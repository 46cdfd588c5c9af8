"""Every backend against the reference backend on random inputs."""

import math
import warnings

import pytest
import torch

import sparsevdit as sv
from sparsevdit import patterns as P
from sparsevdit.kernels import BackendError, get_backend

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")

LAYOUTS = {
    "plain": sv.TokenLayout(3, 4, 5),  # 60 tokens: not a multiple of 16
    "prefix": sv.TokenLayout(3, 3, 5, text_tokens=7, text_position="prefix"),
    "suffix": sv.TokenLayout(4, 3, 4, text_tokens=9, text_position="suffix"),
}

PATTERNS = {
    "dense": {},
    "skip": {},
    "diagonal": {"width": 12},
    "multi_diagonal": {"width": 8},
    "vertical_stripe": {"sink_frames": 1},
    "union": {"patterns": [{"name": "diagonal", "params": {"width": 6}}, {"name": "vertical_stripe", "params": {"blocks": [1]}}]},
    "random_blocks": {"density": 0.4, "seed": 3},
}

TOL = {torch.float32: (2e-5, 1e-5), torch.bfloat16: (3e-2, 2e-2), torch.float16: (4e-3, 2e-3)}


def rand_qkv(layout, heads=3, batch=2, dim=16, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.num_tokens, dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]


def dense_masked_oracle(q, k, v, pats, layout, scale):
    """Independent oracle: token masks mapped back to frame-major order, float64 attention."""
    outs, lses = [], []
    for h, p in enumerate(pats):
        inv = layout.inverse_permutation(p.ordering)
        mask = p.token_mask()[inv][:, inv]
        s = (q[:, h].double() @ k[:, h].double().transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(s, -1)
        w = torch.nan_to_num(torch.exp(s - lse[..., None]))
        outs.append(w @ v[:, h].double())
        lses.append(lse)
    return torch.stack(outs, 1), torch.stack(lses, 1)


def close(a, b, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_reference_matches_independent_oracle(layout_name, pattern):
    layout = LAYOUTS[layout_name]
    pat = P.build(pattern, layout, block_size=16, **PATTERNS[pattern])
    q, k, v = rand_qkv(layout)
    out, lse = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference", return_lse=True)
    ref_out, ref_lse = dense_masked_oracle(q, k, v, [pat] * 3, layout, 1 / math.sqrt(16))
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_flex_matches_reference_cpu(layout_name, pattern, dtype):
    layout = LAYOUTS[layout_name]
    pat = P.build(pattern, layout, block_size=16, **PATTERNS[pattern])
    q, k, v = rand_qkv(layout, dtype=dtype, seed=1)
    ref, ref_lse = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference", return_lse=True)
    out, lse = sv.sparse_attention(q, k, v, pat, layout=layout, backend="flex", return_lse=True)
    close(out, ref, dtype)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    close(lse[finite], ref_lse[finite], dtype)


def mixed_heads(layout, block_size=16):
    """Per-head mix with two orderings, a skip head and repeated patterns (fused groups)."""
    names = ["diagonal", "skip", "multi_diagonal", "diagonal", "vertical_stripe", "dense", "random_blocks"]
    return [P.build(n, layout, block_size=block_size, **PATTERNS[n]) for n in names]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_masked_sdpa_matches_reference_cpu(layout_name, pattern, dtype):
    layout = LAYOUTS[layout_name]
    pat = P.build(pattern, layout, block_size=16, **PATTERNS[pattern])
    q, k, v = rand_qkv(layout, dtype=dtype, seed=6)
    ref = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference")
    close(sv.sparse_attention(q, k, v, pat, layout=layout, backend="masked_sdpa"), ref, dtype)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["reference", "flex", "masked_sdpa"])
def test_per_head_mix_and_skip_heads(layout_name, backend):
    layout = LAYOUTS[layout_name]
    pats = mixed_heads(layout)
    q, k, v = rand_qkv(layout, heads=len(pats), seed=2)
    with_lse = backend != "masked_sdpa"
    result = sv.sparse_attention(q, k, v, pats, layout=layout, backend=backend, return_lse=with_lse)
    out, lse = result if with_lse else (result, None)
    ref_out, ref_lse = dense_masked_oracle(q, k, v, pats, layout, 1 / math.sqrt(16))
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[:, 1]) == 0, "skip head must write zeros"
    if with_lse:
        assert torch.isinf(lse[:, 1]).all() and (lse[:, 1] < 0).all()
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_dense_pattern_equals_sdpa():
    layout = LAYOUTS["suffix"]
    q, k, v = rand_qkv(layout)
    out = sv.sparse_attention(q, k, v, P.build("dense", layout, block_size=16), layout=layout, backend="flex")
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_custom_scale():
    layout = LAYOUTS["plain"]
    pat = P.build("diagonal", layout, block_size=16, width=12)
    q, k, v = rand_qkv(layout)
    a = sv.sparse_attention(q, k, v, pat, layout=layout, backend="flex", scale=0.3)
    b = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference", scale=0.3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_flex_compiled_path_cpu():
    """The fused (compiled) FlexAttention path, which skips mask_mod inside full blocks, on CPU."""
    layout = LAYOUTS["prefix"]
    pats = mixed_heads(layout)
    q, k, v = rand_qkv(layout, heads=len(pats), batch=1, seed=4)
    flex = get_backend("flex")
    flex.compile = True
    try:
        out = sv.sparse_attention(q, k, v, pats, layout=layout, backend="flex")
        with pytest.raises(BackendError, match="log-sum-exp"):
            sv.sparse_attention(q, k, v, pats, layout=layout, backend="flex", return_lse=True)
    finally:
        flex.compile = None
    ref = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# errors -------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    layout = LAYOUTS["plain"]
    pat = P.build("dense", layout, block_size=16)
    q, k, v = rand_qkv(layout)
    with pytest.raises(ValueError, match="4-D"):
        sv.sparse_attention(q[0], k, v, pat, layout=layout)
    with pytest.raises(ValueError, match="one shape"):
        sv.sparse_attention(q, k[:, :2], v, pat, layout=layout)
    with pytest.raises(ValueError, match="tokens"):
        sv.sparse_attention(q[:, :, :50], k[:, :, :50], v[:, :, :50], pat, layout=layout)
    with pytest.raises(ValueError, match="2 patterns for 3 heads"):
        sv.sparse_attention(q, k, v, [pat, pat], layout=layout)
    other = P.build("dense", LAYOUTS["prefix"], block_size=16)
    with pytest.raises(ValueError, match="built for layout"):
        sv.sparse_attention(q, k, v, other, layout=layout)
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        sv.sparse_attention(q, k, v, pat, layout=layout, backend="nope")


def test_backend_refusal_says_why():
    layout = LAYOUTS["plain"]
    pat = P.build("dense", layout, block_size=16)
    q, k, v = rand_qkv(layout, dim=24)  # not a power of two
    with pytest.raises(BackendError, match="head_dim 24"):
        sv.sparse_attention(q, k, v, pat, layout=layout, backend="flex")


def test_auto_lists_every_backend_when_none_fits(monkeypatch):
    from sparsevdit.kernels import blockwise, masked_sdpa, reference

    monkeypatch.setattr(reference, "MAX_SCORE_ELEMENTS", 10)
    monkeypatch.setattr(masked_sdpa, "MAX_MASK_ELEMENTS", 10)
    monkeypatch.setattr(blockwise.BlockwiseBackend, "cannot_run", lambda self, call: "turned off by this test")
    layout = LAYOUTS["plain"]
    pat = P.build("diagonal", layout, block_size=16, width=12)
    q, k, v = rand_qkv(layout)
    with pytest.raises(BackendError) as err:
        sv.sparse_attention(q, k, v, pat, layout=layout, backend="auto")
    for name in sv.available_backends():
        assert f"{name}:" in str(err.value)


def test_dense_heads_go_to_sdpa_and_match_reference():
    layout = LAYOUTS["suffix"]
    pat = P.build("dense", layout, block_size=16)
    q, k, v = rand_qkv(layout)
    from sparsevdit.kernels.registry import AttentionCall, select_backend

    call = AttentionCall(q.device, q.dtype, 2, 3, layout.num_tokens, 16, (pat,) * 3, False)
    assert select_backend("auto", call).name == "sdpa"
    out = sv.sparse_attention(q, k, v, pat, layout=layout)
    ref = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(BackendError, match="dense heads only"):
        sv.sparse_attention(q, k, v, P.build("diagonal", layout, block_size=16, width=8), layout=layout, backend="sdpa")


@pytest.mark.parametrize("return_lse", [False, True], ids=["out", "lse"])
def test_auto_sends_dense_heads_of_a_mixed_layer_to_sdpa(monkeypatch, return_lse):
    # A layer mixing dense and sparse heads: with "auto" the dense heads form their own group (the
    # sdpa backend: cuDNN on CUDA), unless the lse is asked for (sdpa gives none: one fused group then).
    layout = LAYOUTS["suffix"]
    dense = P.build("dense", layout, block_size=16)
    diag = P.build("diagonal", layout, block_size=16, width=8)
    multi = P.build("multi_diagonal", layout, block_size=16, width=8)
    pats = [diag, dense, multi, dense]
    q, k, v = rand_qkv(layout, heads=4)
    from sparsevdit.kernels import api

    chosen = []
    real = api.select_backend

    def recording(name, call):
        impl = real(name, call)
        chosen.append((impl.name, call.heads))
        return impl

    ref = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference", return_lse=return_lse)
    monkeypatch.setattr(api, "select_backend", recording)
    got = sv.sparse_attention(q, k, v, pats, layout=layout, return_lse=return_lse)
    if return_lse:
        assert all(name != "sdpa" for name, _ in chosen) and len(chosen) == 2  # frame-major + reordered
        torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
        got, ref = got[0], ref[0]
    else:
        assert ("sdpa", 2) in chosen
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads", [[0, 1, 2], [1], [0, 2]], ids=["all", "one", "gap"])
def test_sdpa_backend_writes_its_heads_in_place(heads):
    # run_into on a [B, N, H, D]-backed view (diffusers' layout), head subsets included; the others untouched
    layout = LAYOUTS["plain"]
    pat = P.build("dense", layout, block_size=16)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in rand_qkv(layout))
    out = torch.full_like(q, 7.0)
    backend = get_backend("sdpa")
    from sparsevdit.kernels.registry import AttentionCall

    call = AttentionCall(q.device, q.dtype, 2, len(heads), layout.num_tokens, 16, (pat,) * len(heads), False)
    backend.run_into(q, k, v, call, 0.25, heads=torch.tensor(heads, dtype=torch.int32), perm=None, out=out, lse=None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
    others = [h for h in range(3) if h not in heads]
    torch.testing.assert_close(out[:, heads], ref[:, heads], atol=1e-5, rtol=1e-5)
    assert (out[:, others] == 7.0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_mixed_layer():
    # On a GPU: the dense heads through sdpa (cuDNN first) in place, the sparse ones through the best
    # sparse backend, together equal to the reference backend
    layout = sv.TokenLayout(4, 8, 16)  # 512 tokens
    dense = P.build("dense", layout, block_size=128)
    diag = P.build("diagonal", layout, block_size=128, width=128)
    pats = [diag, dense, dense, diag]
    q, k, v = rand_qkv(layout, heads=4, batch=1, dim=128, dtype=torch.bfloat16, device="cuda")
    got = sv.sparse_attention(q, k, v, pats, layout=layout)
    ref = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference")
    close(got, ref, torch.bfloat16)


def test_auto_on_cpu_runs():
    layout = LAYOUTS["plain"]
    pat = P.build("diagonal", layout, block_size=16, width=12)
    q, k, v = rand_qkv(layout)
    ref = sv.sparse_attention(q, k, v, pat, layout=layout, backend="reference")
    torch.testing.assert_close(sv.sparse_attention(q, k, v, pat, layout=layout), ref)


# GPU ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout_name", ["plain_big", "prefix_big", "suffix_big"])
def test_flex_matches_reference_gpu(layout_name, dtype):
    layout = {
        "plain_big": sv.TokenLayout(5, 12, 13),
        "prefix_big": sv.TokenLayout(4, 10, 11, text_tokens=30, text_position="prefix"),
        "suffix_big": sv.TokenLayout(6, 9, 10, text_tokens=20, text_position="suffix"),
    }[layout_name]
    pats = [
        P.build("diagonal", layout, width=200),
        P.build("skip", layout),
        P.build("multi_diagonal", layout, width=150),
        P.build("vertical_stripe", layout, sink_frames=1),
        P.build("dense", layout),
        P.build("random_blocks", layout, density=0.5, seed=1),
    ]
    q, k, v = rand_qkv(layout, heads=len(pats), batch=1, dim=64, dtype=dtype, device="cuda", seed=5)
    out, lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="flex", return_lse=True)
    ref, ref_lse = sv.sparse_attention(q, k, v, pats, layout=layout, backend="reference", return_lse=True)
    rel = (out.float() - ref.float()).norm() / ref.float().norm()
    assert rel < 1e-2
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=2e-2, rtol=1e-2)


def test_per_head_mix_accepts_strided_inputs():
    """The diffusers processors pass [B, N, H, D] tensors viewed as [B, H, N, D]: same result as contiguous."""
    layout = LAYOUTS[next(iter(LAYOUTS))]
    pats = mixed_heads(layout)
    q, k, v = rand_qkv(layout, heads=len(pats), seed=4)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not strided[0].is_contiguous()
    out, lse = sv.sparse_attention(*strided, pats, layout=layout, backend="reference", return_lse=True)
    ref_out, ref_lse = dense_masked_oracle(q, k, v, pats, layout, 1 / math.sqrt(16))
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
