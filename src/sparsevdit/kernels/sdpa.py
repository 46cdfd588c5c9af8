"""SDPA backend: heads whose patterns are all dense go to PyTorch's fused dense attention.

On CUDA it asks for cuDNN first: on Hopper cuDNN's attention is the fastest dense kernel there is (the
baseline of every efficiency figure, docs/kernel.md). PyTorch's own order depends on its version
(with torch 2.11 on the H200 it ran as fast as cuDNN, ``bench/results/dense-heads-h200.json``;
FlashAttention-2, which some versions prefer, ran at 0.62 of cuDNN on the H100). A dense plan entry (or
a model running without a plan) therefore costs nothing over the model's own attention, and
``sparse_attention(backend="auto")`` sends the dense heads of a sparse layer here, except on Hopper at
64+ key blocks, where the triton backend's Gluon kernel beats cuDNN (``kernels-h200.json``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .registry import AttentionCall, register_backend


def _cudnn_first():
    """SDPA backends in the order cuDNN, FlashAttention, memory-efficient, math (each used only if it
    supports the input). torch without ``set_priority`` keeps its own order among them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # pragma: no cover - torch before set_priority
        return sdpa_kernel(order)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense attention over [B, H, N, D]: cuDNN first on CUDA, PyTorch's own choice elsewhere."""
    with _cudnn_first() if q.device.type == "cuda" else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


class SDPABackend:
    name = "sdpa"
    priority = 100

    def cannot_run(self, call: AttentionCall) -> str | None:
        if not all(p.is_dense for p in call.patterns):
            return "runs dense heads only (some pattern here is sparse)"
        if call.return_lse:
            return "scaled_dot_product_attention does not return the log-sum-exp"
        return None

    def prefer_not(self, call: AttentionCall) -> str | None:
        from .triton_backend import runs_on_gluon

        if runs_on_gluon(call):
            return ("the triton backend runs these dense heads on its Gluon kernel, faster than cuDNN on Hopper "
                    "(1.08-1.11x on the H200 at Wan/HunyuanVideo sizes: bench/results/kernels-h200.json)")
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        return dense_attention(q, k, v, scale), None

    def run_into(self, q, k, v, call: AttentionCall, scale: float, *, heads, perm, out, lse) -> None:
        """The dense heads ``heads`` of the full q/k/v, written into ``out`` (lse is never asked for: see
        ``cannot_run``). ``perm`` is ignored: dense attention gives every token the same result in any
        token order, so the heads are computed in the model's own order."""
        if heads.numel() == q.shape[1]:  # every head, in order (groups list their heads ascending)
            out.copy_(dense_attention(q, k, v, scale))
            return
        heads = heads.long()  # index_copy_ takes int64 indices only (the groups' head maps are int32)
        qg, kg, vg = (t.index_select(1, heads) for t in (q, k, v))
        out.index_copy_(1, heads, dense_attention(qg, kg, vg, scale))


register_backend(SDPABackend())
