"""FlexAttention backend: block masks built from our block indices, never from an N x N mask.

Kept blocks are passed as *full* blocks, so FlexAttention evaluates no mask function inside them;
the sequence-length bound of a partial last block is applied by FlexAttention itself.
"""

from __future__ import annotations

import torch

from ..caches import BoundedCache
from .blockwise import all_finite, blockwise_attention
from .registry import AttentionCall, register_backend

try:  # torch >= 2.9 asks for the log-sum-exp through return_aux; older ones through return_lse
    from torch.nn.attention.flex_attention import AuxRequest as _AuxRequest
except ImportError:  # pragma: no cover
    _AuxRequest = None

_BLOCK_MASKS = BoundedCache("flex.block_masks", 64)
_COMPILED = None


def _flex():
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except ImportError:  # pragma: no cover - torch >= 2.11 always has it
        return None, None
    return flex_attention, BlockMask


def _compiled_flex():
    # One compiled function for all shapes; dynamo recompiles per new shape and caches each.
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        flex_attention, _ = _flex()
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def block_mask_for(patterns, device: torch.device):
    """A FlexAttention BlockMask [1, h, ...] from per-head block indices, cached per patterns and device."""
    key = (tuple(p.key for p in patterns), str(device))
    return _BLOCK_MASKS.get_or_build(key, lambda: _build_block_mask(patterns, device))


def _build_block_mask(patterns, device: torch.device):
    _, BlockMask = _flex()
    nq, nkv = patterns[0].num_q_blocks, patterns[0].num_kv_blocks
    counts = torch.stack([p.kv_counts for p in patterns])[None]  # [1, h, QB]
    indices = torch.zeros(1, len(patterns), nq, nkv, dtype=torch.int32)
    for h, p in enumerate(patterns):
        w = p.kv_indices.shape[1]
        indices[0, h, :, :w] = p.kv_indices.clamp(min=0)
    n, bs = patterns[0].layout.num_tokens, patterns[0].block_size
    # The fused kernels never call mask_mod inside full blocks; FlexAttention's unfused (eager, CPU)
    # path ignores the block lists and applies mask_mod everywhere, so it must say the same thing.
    table = torch.stack([p.block_mask for p in patterns]).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return table[h, q_idx // bs, kv_idx // bs]

    mask = BlockMask.from_kv_blocks(
        torch.zeros_like(counts).to(device),
        torch.zeros_like(indices).to(device),
        full_kv_num_blocks=counts.to(device),
        full_kv_indices=indices.to(device),
        BLOCK_SIZE=patterns[0].block_size,
        mask_mod=mask_mod,
        seq_lengths=(n, n),
    )
    return mask


class FlexBackend:
    name = "flex"
    priority = 10
    # None: compile on CUDA only (on CPU compilation takes ~10 s per shape and gains little).
    compile: bool | None = None

    def cannot_run(self, call: AttentionCall) -> str | None:
        if _flex()[0] is None:
            return "torch.nn.attention.flex_attention is not available in this torch"
        if call.device.type not in ("cuda", "cpu"):
            return f"FlexAttention runs on cuda and cpu, not {call.device.type}"
        if call.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {call.dtype} is not float16, bfloat16 or float32"
        if call.head_dim < 16 or call.head_dim & (call.head_dim - 1):
            return f"head_dim {call.head_dim} is not a power of two >= 16"
        if call.requires_grad and call.device.type == "cpu":
            return "FlexAttention has no backward on CPU (inputs require grad): use reference, or torch.no_grad()"
        if call.return_lse and self.compile and call.device.type == "cpu":
            return "compiled FlexAttention on CPU cannot return the log-sum-exp (torch limitation)"
        return None

    def prefer_not(self, call: AttentionCall) -> str | None:
        if call.device.type != "cuda":
            return "on CPU FlexAttention runs unfused (it materialises the scores), no faster than reference"
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        compiled = self.compile or (self.compile is None and q.device.type == "cuda")
        if not (compiled and q.device.type == "cuda") and not all_finite(v):
            # Unfused FlexAttention multiplies every value row by its (zero) masked probability, which turns
            # a value NaN or infinity into NaN on rows that do not keep it; the blockwise path reads kept
            # keys only. (The fused CUDA kernel skips unkept blocks and needs no such care.)
            return blockwise_attention(q, k, v, call.patterns, scale, call.return_lse)
        block_mask = block_mask_for(call.patterns, q.device)
        if compiled:
            fn = _compiled_flex()
        else:
            fn, _ = _flex()
            import warnings

            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if not call.return_lse:
            return fn(q, k, v, block_mask=block_mask, scale=scale), None
        if _AuxRequest is not None:
            out, aux = fn(q, k, v, block_mask=block_mask, scale=scale, return_aux=_AuxRequest(lse=True))
            return out, aux.lse.float()
        out, lse = fn(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
        return out, lse.float()


register_backend(FlexBackend())
