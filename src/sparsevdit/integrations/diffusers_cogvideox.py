"""diffusers ``CogVideoXTransformer3DModel``: plan layer ``i`` is ``transformer_blocks[i].attn1``.

Joint attention: the text tokens are concatenated *before* the video tokens, RoPE (when the pipeline
passes ``image_rotary_emb``) is applied to the video part only. The processor mirrors diffusers
0.42's ``CogVideoXAttnProcessor2_0`` (and its fused variant's projections). See
``integrations/diffusers.py`` for the design.
"""

from __future__ import annotations

import torch

from ..layout import TokenLayout
from ..plan import ModelSignature
from .diffusers import ModelAdapter, SparseProcessorBase


class SparseCogVideoXAttnProcessor(SparseProcessorBase):
    """Joint text + video attention through ``sparse_attention``; dense layers call the original."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        patterns = self.patterns()
        if patterns is None:
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, image_rotary_emb=image_rotary_emb
            )
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape

        key_valid = None
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            key_valid = self.state.key_valid(attention_mask[:, :1], batch_size, sequence_length)

        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        hidden_states = self.attend(query, key, value, patterns, n=sequence_length, key_valid=key_valid)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


def _modules(model) -> list:
    return [block.attn1 for block in model.transformer_blocks]


def _signature(model) -> ModelSignature:
    cfg = model.config
    return ModelSignature("CogVideoXTransformer3DModel", len(model.transformer_blocks), cfg.num_attention_heads, cfg.attention_head_dim)


def _layout(model, bound: dict) -> TokenLayout:
    _, frames, _, height, width = bound["hidden_states"].shape  # [B, F, C, H, W]
    p, p_t = model.config.patch_size, model.config.patch_size_t
    text = int(bound["encoder_hidden_states"].shape[1])
    return TokenLayout(
        frames // p_t if p_t else frames, height // p, width // p,
        text_tokens=text, text_position="prefix" if text else "none",
    )


ADAPTER = ModelAdapter("CogVideoXTransformer3DModel", _modules, _signature, _layout, SparseCogVideoXAttnProcessor)
