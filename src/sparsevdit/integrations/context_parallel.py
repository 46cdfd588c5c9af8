"""Sparse self-attention under diffusers' context parallelism (``model.enable_parallelism``).

Ulysses (``ContextParallelConfig(ulysses_degree=P)``): every rank holds 1/P of the tokens of all heads;
diffusers' templated attention exchanges them all-to-all so that each rank attends over the *full*
sequence of H/P heads, runs an attention op there, and exchanges the output back. Our processors hand
that template an op of ours: on rank r it sees q, k, v of heads [r H/P, (r+1) H/P) over every token,
checks the layout there (the only place the full sequence is seen), and runs the plan's patterns of
those heads (a dynamic method selects on those heads), through ``sparse_attention`` as on one GPU. The
all-to-all stays diffusers' own (NCCL, gloo), nothing is re-implemented.

Refused with a message naming Ulysses: ring attention (keys split across ranks: block lists would need
offsets per key shard), the "anything" variants (uneven shards, padded heads), capture (the searches
profile on one process), and key-padding masks (Wan, the model with a ``_cp_plan``, has none).
"""

from __future__ import annotations

from typing import Any

import torch

from ..plan import PlanError


def is_context_parallel(config: Any) -> bool:
    cp = getattr(config, "context_parallel_config", None)
    return cp is not None and (getattr(cp, "ulysses_degree", 1) > 1 or getattr(cp, "ring_degree", 1) > 1)


def _check(cp, heads: int) -> int:
    """The Ulysses degree, after refusing what our op cannot run."""
    if getattr(cp, "ring_degree", 1) > 1:
        raise PlanError("context_parallel_config.ring_degree", cp.ring_degree,
                        "1: sparse plans run under Ulysses (ContextParallelConfig(ulysses_degree=P)), which keeps the whole "
                        "sequence of a head on one rank; ring attention splits the keys across ranks")
    if getattr(cp, "ulysses_anything", False):
        raise PlanError("context_parallel_config.ulysses_anything", True,
                        "False: sparse plans need whole heads per rank (heads a multiple of the Ulysses degree)")
    degree = cp.ulysses_degree
    if heads % degree:
        raise PlanError("context_parallel_config.ulysses_degree", degree,
                        f"a divisor of the model's {heads} heads (each rank runs whole heads of the plan)")
    return degree


def ulysses_attend(proc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns, *,
                   key_valid: torch.Tensor | None, attention, dynamic: bool = False, capture: bool = False) -> torch.Tensor:
    """``SparseProcessorBase.attend`` under Ulysses: q, k, v [B, H, N/P, D] of this rank's tokens -> the
    output of the same shape. ``attention``: the processors' ``sparse_attention_key_masked``; ``dynamic``:
    the layer's method selects (``patterns`` unused); ``capture``: a search's capture is installed."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    config = proc._parallel_config
    cp = config.context_parallel_config
    heads = q.shape[1]
    degree = _check(cp, heads)
    if capture:
        raise PlanError("capture", "under context parallelism",
                        "one process: profile and search a model without enable_parallelism, then apply the plan to it")
    if key_valid is not None:
        raise PlanError("attention_mask", "a key-padding mask under context parallelism",
                        "no key mask: sparse attention under Ulysses runs models without one (Wan)")
    rank = cp._ulysses_mesh.get_local_rank()
    local = heads // degree
    state, layer = proc.state, proc.layer

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        # [B, N, H/P, D] over every token: this rank's heads
        qh, kh, vh = (x.permute(0, 2, 1, 3) for x in (query, key, value))
        layout = state.check_tokens(qh.shape[2], f"layer {layer} (Ulysses rank {rank})")
        if dynamic:
            pats = state.methods.dynamic.patterns_for(layer, state.current, qh, kh, layout, v=vh)
        else:
            pats = list(patterns)[rank * local:(rank + 1) * local]  # this rank's heads of the plan
        out = attention(qh, kh, vh, pats, layout=layout, key_valid=None, backend=state.backend,
                                          damping=state.damping)
        return out.permute(0, 2, 1, 3)

    out = _templated_context_parallel_attention(
        *(x.permute(0, 2, 1, 3).contiguous() for x in (q, k, v)), None, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=None, _parallel_config=config)
    return out.permute(0, 2, 1, 3)
