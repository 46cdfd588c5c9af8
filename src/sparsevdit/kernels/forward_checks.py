"""What our forward kernels (backends triton and gluon) share in what they can run, in one place both
import (neither imports the other's module at load)."""

from __future__ import annotations

from . import triton_sparse as ts
from .registry import AttentionCall


def forward_kernel_reasons(call: AttentionCall, kernel: str) -> str | None:
    """What our forward kernels (triton, gluon) share: no autograd, fp16/bf16, head_dim 64 or 128."""
    if getattr(call, "requires_grad", False):
        return f"forward only: the {kernel} kernel has no backward pass (autograd needs another backend)"
    if call.dtype not in ts.SUPPORTED_DTYPES:
        return f"dtype {call.dtype} is not float16 or bfloat16"
    if call.head_dim not in ts.SUPPORTED_HEAD_DIMS:
        return f"head_dim {call.head_dim} is not 64 or 128"
    return None
