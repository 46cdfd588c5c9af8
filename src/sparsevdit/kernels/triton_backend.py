"""Triton backend: our block-sparse flash-attention forward (kernels/triton_sparse.py).

Runs on CUDA (Hopper path with TMA and warp specialisation on sm_90+, a pointer-load path on older
GPUs) and, for tests, on the CPU under ``TRITON_INTERPRET=1``. Per-call index tensors are built once
per (pattern keys, device) and cached.
"""

from __future__ import annotations

from . import triton_sparse as ts
from .registry import AttentionCall, register_backend


def forward_kernel_reasons(call: AttentionCall, kernel: str) -> str | None:
    """What our forward kernels (triton, gluon) share: no autograd, fp16/bf16, head_dim 64 or 128."""
    if getattr(call, "requires_grad", False):
        return f"forward only: the {kernel} kernel has no backward pass (autograd needs another backend)"
    if call.dtype not in ts.SUPPORTED_DTYPES:
        return f"dtype {call.dtype} is not float16 or bfloat16"
    if call.head_dim not in ts.SUPPORTED_HEAD_DIMS:
        return f"head_dim {call.head_dim} is not 64 or 128"
    return None


class TritonBackend:
    name = "triton"
    priority = 20  # tried before flex by auto

    def unsupported(self, call: AttentionCall) -> str | None:
        if not ts.HAS_TRITON:
            return "triton is not installed (pip install 'sparsevdit[triton]')"
        if call.device.type != "cuda" and not (call.device.type == "cpu" and ts.interpret_mode()):
            return (f"the Triton kernel runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
                    f"not {call.device.type}")
        reason = forward_kernel_reasons(call, "Triton")
        if reason:
            return reason
        bs = call.patterns[0].block_size
        if bs not in ts.SUPPORTED_BLOCK_SIZES:
            return (f"block_size {bs} is not 64 or 128: the query tile must equal the block (or half of it) "
                    "and 64-128 row tiles are what Hopper's tensor cores and shared memory suit")
        return ts.triton_missing()

    def unsuited(self, call: AttentionCall) -> str | None:
        if call.device.type != "cuda":
            return "the CPU interpreter runs the kernel in Python: for tests only, far slower than reference"
        if not ts.hopper_features(call.device):
            return "this GPU lacks TMA / warp specialisation (pre-Hopper): the kernel runs its untuned fallback path"
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        index = ts.block_index_for(call.patterns, q.device)
        return ts.block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse)

    def run_into(self, q, k, v, call: AttentionCall, scale: float, *, heads, perm, out, lse) -> None:
        """The group ``heads`` of the full [B, H, N, D] q/k/v (any strides), written into out/lse in place;
        ``perm``: the group's token reordering (position j is token perm[j]) or None."""
        index = ts.block_index_for(call.patterns, q.device)
        ts.block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse, heads=heads, perm=perm,
                                  out=out, lse=lse)


register_backend(TritonBackend())
