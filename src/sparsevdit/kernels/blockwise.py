"""Blockwise backend: attention computed a chunk of query blocks at a time over their kept key blocks only.

The memory-bounded path for CPUs (and any input the fused kernels cannot take): in float32, each chunk
gathers its query blocks' kept keys and values, so the working set is bounded by ``CHUNK_BYTES``
whatever the sequence length, where ``reference`` and ``masked_sdpa`` hold N x N scores or masks. A NaN
or infinity reaches exactly the query rows that keep its key, as in dense attention, since keys a row
does not keep are never read. Differentiable (plain torch operations).
"""

from __future__ import annotations

import torch

from ..patterns import BlockPattern
from .registry import AttentionCall, register_backend

# Working set of one chunk (gathered keys and values, scores and probabilities, float32).
CHUNK_BYTES = 256 * 2**20


def all_finite(*tensors: torch.Tensor) -> bool:
    """No NaN or infinity in any of ``tensors`` (the masked paths send such inputs here)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _chunk_bytes(batch: int, query_blocks: int, width: int, block: int, head_dim: int) -> int:
    keys = batch * query_blocks * width * block
    return 4 * (2 * keys * head_dim + 2 * keys * block + batch * query_blocks * block * head_dim)


def working_set_bytes(call: AttentionCall) -> int:
    """Largest temporary memory of a call: one chunk (at least one query block at its widest row)."""
    p = call.patterns[0]
    widest = max(int(q.kv_counts.max()) for q in call.patterns)
    one = _chunk_bytes(call.batch, 1, max(1, widest), p.block_size, call.head_dim)
    return max(one, min(CHUNK_BYTES, one * p.num_q_blocks))


def _chunks(counts: torch.Tensor, batch: int, block: int, head_dim: int):
    """Consecutive query-block ranges [i0, i1) and their widest row, each within CHUNK_BYTES (or one block)."""
    counts = counts.tolist()
    i0 = 0
    while i0 < len(counts):
        i1, width = i0 + 1, max(1, counts[i0])
        while i1 < len(counts):
            wider = max(width, counts[i1])
            if _chunk_bytes(batch, i1 + 1 - i0, wider, block, head_dim) > CHUNK_BYTES:
                break
            i1, width = i1 + 1, wider
        yield i0, i1, width
        i0 = i1


def _head(q, k, v, p: BlockPattern, scale: float, damping=None):
    """One head: q/k/v [B, N, D]; returns out [B, N, D] and lse [B, N] (float32, or float64 for float64)."""
    batch, n, head_dim = q.shape
    bs = p.block_size
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    outs, lses = [], []
    offsets = torch.arange(bs, device=q.device)
    perm = p.layout.permutation(p.ordering).to(q.device) if damping is not None else None
    for i0, i1, width in _chunks(p.kv_counts, batch, bs, head_dim):
        c = i1 - i0
        rows = (torch.arange(i0 * bs, i1 * bs, device=q.device)).clamp(max=n - 1)
        blocks = p.kv_indices[i0:i1, :width].to(q.device).long()  # [c, W], -1 padded
        listed = torch.arange(width, device=q.device)[None, :] < p.kv_counts[i0:i1, None].to(q.device)
        tokens = blocks.clamp(min=0)[:, :, None] * bs + offsets  # [c, W, bs]
        valid = (listed[:, :, None] & (tokens < n)).reshape(c, width * bs)  # [c, W*bs]
        tokens = tokens.reshape(c, width * bs).clamp(max=n - 1)
        qc = q[:, rows].to(acc).view(batch, c, bs, head_dim)
        kc = k[:, tokens].to(acc)  # [B, c, W*bs, D]
        vc = torch.where(valid[None, :, :, None], v[:, tokens].to(acc), 0.0)  # unlisted slots add nothing
        scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # [B, c, bs, W*bs]
        if damping is not None:  # by the tokens (model order) of these positions
            scores = damping.apply_to_scores(scores, perm[rows].view(c, bs), perm[tokens], p.layout)
        scores = scores.masked_fill(~valid[None, :, None, :], float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf on rows that keep no key
        probs = torch.exp(scores - torch.where(torch.isinf(lse) & (lse < 0), 0.0, lse)[..., None])
        outs.append(torch.matmul(probs, vc).reshape(batch, c * bs, head_dim))
        lses.append(lse.reshape(batch, c * bs))
    return torch.cat(outs, 1)[:, :n], torch.cat(lses, 1)[:, :n]


def blockwise_attention(q, k, v, patterns, scale: float, return_lse: bool = False, damping=None):
    """[B, h, N, D] attention with one pattern per head (already in the patterns' token order)."""
    results = [_head(q[:, h], k[:, h], v[:, h], p, scale, damping) for h, p in enumerate(patterns)]
    out = torch.stack([o for o, _ in results], 1).to(q.dtype)
    return out, (torch.stack([lse for _, lse in results], 1).float() if return_lse else None)


class BlockwiseBackend:
    name = "blockwise"
    priority = 3  # after masked_sdpa (fused, faster at small sizes), before reference
    supports_damping = True

    def cannot_run(self, call: AttentionCall) -> str | None:
        if not call.dtype.is_floating_point:
            return f"dtype {call.dtype} is not a floating-point type"
        return None

    def prefer_not(self, call: AttentionCall) -> str | None:
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        return blockwise_attention(q, k, v, call.patterns, scale, call.return_lse, call.damping)


register_backend(BlockwiseBackend())
