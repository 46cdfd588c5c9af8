"""Reference backend: dense attention with the block mask expanded to tokens. The test oracle.

Computes in float32 on any device. Memory is h x N x N: meant for tests and small inputs.
"""

from __future__ import annotations

import torch

from .registry import AttentionCall, register_backend

# Above this many score elements per call the reference refuses rather than exhaust memory.
MAX_SCORE_ELEMENTS = 2**31


class ReferenceBackend:
    name = "reference"
    priority = 0

    def unsupported(self, call: AttentionCall) -> str | None:
        elements = call.batch * call.heads * call.num_tokens**2
        if elements > MAX_SCORE_ELEMENTS:
            return f"would materialise {elements:,} attention scores (limit {MAX_SCORE_ELEMENTS:,})"
        return None

    def unsuited(self, call: AttentionCall) -> str | None:
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        mask = torch.stack([p.token_mask() for p in call.patterns]).to(q.device)  # [h, N, N]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf on rows that keep no key
        probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
        out = torch.matmul(probs, v.float()).to(q.dtype)
        return out, (lse if call.return_lse else None)


register_backend(ReferenceBackend())
