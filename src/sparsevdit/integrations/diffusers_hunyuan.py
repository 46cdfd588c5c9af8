"""diffusers ``HunyuanVideoTransformer3DModel``: dual-stream then single-stream self-attention.

Plan layers ``0 .. num_layers-1`` are ``transformer_blocks[i].attn`` (dual stream: text projected by
``add_{q,k,v}_proj``), layers ``num_layers ..`` are ``single_transformer_blocks[j].attn`` (single
stream: one projection of the concatenated sequence). In both the sequence is video first, then the
(padded) text; RoPE covers the video part only; the model's ``[B, 1, 1, N]`` mask hides padded text
keys, which ``sparse_attention_key_masked`` respects exactly (see ``integrations/diffusers.py``).
The processor mirrors diffusers 0.42's ``HunyuanVideoAttnProcessor2_0``.
"""

from __future__ import annotations

import torch

from ..layout import TokenLayout
from ..plan import ModelSignature
from .diffusers import ModelAdapter, SparseProcessorBase


class SparseHunyuanVideoAttnProcessor(SparseProcessorBase):
    """Video + text self-attention through ``sparse_attention``; dense layers call the original."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        patterns = self.patterns()
        if patterns is None or encoder_hidden_states is None:
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, image_rotary_emb=image_rotary_emb
            )
        from diffusers.models.embeddings import apply_rotary_emb

        text_length = encoder_hidden_states.shape[1]
        if attn.add_q_proj is None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1. QKV projections
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. Rotary embeddings on the video stream
        if image_rotary_emb is not None:
            if attn.add_q_proj is None:
                query = torch.cat(
                    [apply_rotary_emb(query[:, :-text_length], image_rotary_emb, sequence_dim=1), query[:, -text_length:]],
                    dim=1,
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :-text_length], image_rotary_emb, sequence_dim=1), key[:, -text_length:]],
                    dim=1,
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Text stream projections (dual-stream blocks)
        if attn.add_q_proj is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states)
            encoder_key = attn.add_k_proj(encoder_hidden_states)
            encoder_value = attn.add_v_proj(encoder_hidden_states)

            encoder_query = encoder_query.unflatten(2, (attn.heads, -1))
            encoder_key = encoder_key.unflatten(2, (attn.heads, -1))
            encoder_value = encoder_value.unflatten(2, (attn.heads, -1))

            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        # 5. Attention: [B, N, H, D] -> [B, H, N, D], padded text keys excluded exactly
        batch, n = query.shape[0], query.shape[1]
        key_valid = self.state.key_valid(attention_mask, batch, n)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), patterns, n=n, key_valid=key_valid)
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projections
        hidden_states, encoder_hidden_states = hidden_states[:, :-text_length], hidden_states[:, -text_length:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _modules(model) -> list:
    return [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]


def _signature(model) -> ModelSignature:
    cfg = model.config
    layers = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    return ModelSignature("HunyuanVideoTransformer3DModel", layers, cfg.num_attention_heads, cfg.attention_head_dim)


def _layout(model, bound: dict) -> TokenLayout:
    _, _, frames, height, width = bound["hidden_states"].shape  # [B, C, F, H, W]
    p, p_t = model.config.patch_size, model.config.patch_size_t
    text = int(bound["encoder_hidden_states"].shape[1])
    return TokenLayout(
        frames // p_t, height // p, width // p, text_tokens=text, text_position="suffix" if text else "none"
    )


ADAPTER = ModelAdapter("HunyuanVideoTransformer3DModel", _modules, _signature, _layout, SparseHunyuanVideoAttnProcessor)
