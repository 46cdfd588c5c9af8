"""SDPA backend: heads whose patterns are all dense go to PyTorch's fused dense attention.

On CUDA that is cuDNN / FlashAttention, the fastest dense kernels there are; a dense plan entry (or a
model running without a plan) therefore costs nothing over the model's own attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import AttentionCall, register_backend


class SDPABackend:
    name = "sdpa"
    priority = 100

    def unsupported(self, call: AttentionCall) -> str | None:
        if not all(p.is_dense for p in call.patterns):
            return "runs dense heads only (some pattern here is sparse)"
        if call.return_lse:
            return "scaled_dot_product_attention does not return the log-sum-exp"
        return None

    def unsuited(self, call: AttentionCall) -> str | None:
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        return F.scaled_dot_product_attention(q, k, v, scale=scale), None


register_backend(SDPABackend())
