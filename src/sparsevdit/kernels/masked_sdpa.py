"""Masked-SDPA backend: PyTorch's fused attention with the block mask expanded to a boolean token mask.

Costs what dense attention costs (no saving) and N x N booleans per head, but it is the fastest sparse
path on a CPU at short sequences, where FlexAttention runs unfused: it keeps the bundled model's CPU
demo as fast sparse as dense. Expanded masks are cached per pattern set.

A masked product spreads non-finite values: a NaN key or value reaches rows whose mask excludes it
(0 x NaN is NaN, and the kernel adds the mask to the scores). Inputs holding a NaN or infinity are
therefore computed by the blockwise backend, which reads only kept keys; finite inputs never pay for it
beyond one ``isfinite`` pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..caches import BoundedCache
from .blockwise import all_finite, blockwise_attention
from .registry import CPU_MEMORY_BUDGET, AttentionCall, register_backend

MAX_MASK_ELEMENTS = 2**28  # 256 MB of booleans
# Masks up to this size are kept between calls; larger ones are rebuilt (the cache holds 16).
CACHED_MASK_ELEMENTS = 2**25
_MASKS = BoundedCache("masked_sdpa.token_masks", 16)


def _build_mask(call: AttentionCall, device) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [1, h, N, N] token mask, and bool [1, h, N, 1]: the rows that keep some key."""
    mask = torch.stack([p.token_mask() for p in call.patterns]).to(device)[None]
    return mask, mask.any(-1, keepdim=True)


def _mask(call: AttentionCall, device) -> tuple[torch.Tensor, torch.Tensor]:
    if call.heads * call.num_tokens**2 > CACHED_MASK_ELEMENTS:
        return _build_mask(call, device)
    key = (tuple(p.key for p in call.patterns), str(device))
    return _MASKS.get_or_build(key, lambda: _build_mask(call, device))


class MaskedSDPABackend:
    name = "masked_sdpa"
    priority = 5

    def cannot_run(self, call: AttentionCall) -> str | None:
        if call.return_lse:
            return "scaled_dot_product_attention does not return the log-sum-exp"
        elements = call.heads * call.num_tokens**2
        if elements > MAX_MASK_ELEMENTS:
            return f"would build a {elements:,}-element token mask (limit {MAX_MASK_ELEMENTS:,})"
        return None

    def prefer_not(self, call: AttentionCall) -> str | None:
        if call.device.type == "cuda":
            return "on CUDA the block-sparse kernels skip the work this backend only masks"
        # The mask, the row flags and PyTorch's own blocked working set (a fraction of the mask's size).
        need = 2 * call.batch * call.heads * call.num_tokens**2
        if need > CPU_MEMORY_BUDGET:
            return (f"would hold {need / 2**30:.1f} GiB of token masks and scores, over auto's CPU budget of "
                    f"{CPU_MEMORY_BUDGET / 2**30:.1f} GiB")
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        if not all_finite(q, k, v):
            return blockwise_attention(q, k, v, call.patterns, scale)
        mask, keeps_some = _mask(call, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        # A query that keeps no key gets NaN from SDPA; our convention is a zero output (those rows only).
        return torch.where(keeps_some, out, 0.0), None


register_backend(MaskedSDPABackend())
