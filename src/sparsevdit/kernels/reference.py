"""Reference backend: dense attention with the block mask expanded to tokens. The test oracle.

Computes in float32 on any device. Memory is h x N x N: meant for tests and small inputs (``auto``
leaves long CPU calls to the blockwise backend, ``registry.CPU_MEMORY_BUDGET``).
"""

from __future__ import annotations

import torch

from .registry import CPU_MEMORY_BUDGET, AttentionCall, register_backend

# Above this many score elements per call (about 8 GiB of working set, ``working_set_bytes``) the
# reference refuses even by name rather than exhaust memory: at 2**31 a CPU process was killed.
MAX_SCORE_ELEMENTS = (8 << 30) // 13


def working_set_bytes(call: AttentionCall) -> int:
    """The token mask (bool) and about three float32 copies of the scores (scores, exp, probabilities)."""
    elements = call.batch * call.heads * call.num_tokens**2
    return elements * 13


class ReferenceBackend:
    name = "reference"
    priority = 0
    supports_damping = True

    def cannot_run(self, call: AttentionCall) -> str | None:
        elements = call.batch * call.heads * call.num_tokens**2
        if elements > MAX_SCORE_ELEMENTS:
            return (f"would materialise {elements:,} attention scores, about {elements * 13 / 2**30:.0f} GiB "
                    f"(limit {MAX_SCORE_ELEMENTS:,}): the blockwise backend runs this in bounded memory")
        return None

    def prefer_not(self, call: AttentionCall) -> str | None:
        need = working_set_bytes(call)
        if call.device.type == "cpu" and need > CPU_MEMORY_BUDGET:
            return (f"would hold {need / 2**30:.1f} GiB of N x N scores, over auto's CPU budget of "
                    f"{CPU_MEMORY_BUDGET / 2**30:.1f} GiB")
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        mask = torch.stack([p.token_mask() for p in call.patterns]).to(q.device)  # [h, N, N]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if call.damping is not None:  # positions are in the patterns' ordering: their tokens are perm[j]
            p0 = call.patterns[0]
            perm = p0.layout.permutation(p0.ordering)
            scores = call.damping.apply_to_scores(scores, perm, perm, p0.layout)
        scores = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf on rows that keep no key
        # Only an all-masked row's -inf is replaced: a +inf score makes its row NaN, as softmax does.
        probs = torch.exp(scores - torch.where(torch.isneginf(lse), 0.0, lse)[..., None])
        out = _masked_product(probs, v.float(), mask)
        return out.to(q.dtype), (lse if call.return_lse else None)


def _masked_product(probs: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``probs @ v`` over kept keys only. A plain product would spread a non-finite value of v to rows that
    do not keep its key (their zero probability times NaN or inf is NaN), so non-finite entries of v are
    added, token by token, to the rows that keep them."""
    finite = torch.isfinite(v)
    out = torch.matmul(probs, torch.where(finite, v, 0.0))
    if bool(finite.all()):
        return out
    for b, h, j in (~finite.all(-1)).nonzero().tolist():
        bad = torch.where(finite[b, h, j], 0.0, v[b, h, j])  # [D]: the non-finite entries only
        keeps = mask[h, :, j]  # [N]: rows that keep key j
        out[b, h, keeps] += probs[b, h, keeps, j, None] * bad
    return out


register_backend(ReferenceBackend())
