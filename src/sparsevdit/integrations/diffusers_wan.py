"""diffusers ``WanTransformer3DModel``: plan layer ``i`` is ``blocks[i].attn1`` (video-only self-attention).

The processor mirrors diffusers 0.42's ``WanAttnProcessor`` for self-attention (fused or separate QKV
projections, RMSNorm across heads on q and k, Wan's interleaved RoPE, output projection); the
cross-attention ``attn2`` keeps its own processor. See ``integrations/diffusers.py`` for the design.
"""

from __future__ import annotations

import torch

from ..layout import TokenLayout
from ..plan import ModelSignature
from .diffusers import ModelAdapter, SparseProcessorBase


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # As in WanAttnProcessor.__call__ (diffusers 0.42).
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class SparseWanAttnProcessor(SparseProcessorBase):
    """Self-attention of a Wan block through ``sparse_attention``; dense layers call the original."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        patterns = self.patterns()
        if patterns is None or encoder_hidden_states is not None or attn.add_k_proj is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        batch, n = query.shape[0], query.shape[1]
        key_valid = self.state.key_valid(attention_mask, batch, n)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), patterns, n=n, key_valid=key_valid)
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _modules(model) -> list:
    return [block.attn1 for block in model.blocks]


def _signature(model) -> ModelSignature:
    cfg = model.config
    return ModelSignature("WanTransformer3DModel", len(model.blocks), cfg.num_attention_heads, cfg.attention_head_dim)


def _layout(model, bound: dict) -> TokenLayout:
    hidden_states = bound["hidden_states"]  # [B, C, F, H, W]
    _, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    return TokenLayout(frames // p_t, height // p_h, width // p_w)


ADAPTER = ModelAdapter("WanTransformer3DModel", _modules, _signature, _layout, SparseWanAttnProcessor)
