"""Masked-SDPA backend: PyTorch's fused attention with the block mask expanded to a boolean token mask.

Costs what dense attention costs (no saving) and N x N booleans per head, but it is the fastest sparse
path on a CPU, where FlexAttention runs unfused: it keeps the bundled model's CPU demo as fast sparse
as dense. The expanded masks are cached per pattern set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..caches import BoundedCache
from .registry import AttentionCall, register_backend

MAX_MASK_ELEMENTS = 2**28  # 256 MB of booleans
_MASKS = BoundedCache("masked_sdpa.token_masks", 16)


def _mask(call: AttentionCall, device) -> torch.Tensor:
    key = (tuple(p.key for p in call.patterns), str(device))
    return _MASKS.get_or_build(key, lambda: torch.stack([p.token_mask() for p in call.patterns]).to(device)[None])


class MaskedSDPABackend:
    name = "masked_sdpa"
    priority = 5

    def unsupported(self, call: AttentionCall) -> str | None:
        if call.return_lse:
            return "scaled_dot_product_attention does not return the log-sum-exp"
        elements = call.heads * call.num_tokens**2
        if elements > MAX_MASK_ELEMENTS:
            return f"would build a {elements:,}-element token mask (limit {MAX_MASK_ELEMENTS:,})"
        return None

    def unsuited(self, call: AttentionCall) -> str | None:
        if call.device.type == "cuda":
            return "on CUDA the block-sparse kernels skip the work this backend only masks"
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(call, q.device), scale=scale)
        # A query that keeps no key gets NaN from SDPA; our convention is a zero output.
        return torch.nan_to_num(out, nan=0.0), None


register_backend(MaskedSDPABackend())
