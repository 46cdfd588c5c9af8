"""Real diffusers pipelines at toy size, built offline with random weights: ``tiny:wan``, ``tiny:cogvideox``,
``tiny:hunyuan``.

Every component is the class the full pipeline uses (Wan: UMT5 text encoder, ``AutoencoderKLWan``,
``WanTransformer3DModel``; CogVideoX: T5, ``AutoencoderKLCogVideoX``, ``CogVideoXTransformer3DModel``;
HunyuanVideo: Llama + CLIP text encoders, ``AutoencoderKLHunyuanVideo``,
``HunyuanVideoTransformer3DModel``), configured as small as diffusers' own pipeline tests configure
them, with a word-level tokenizer built from a fixed vocabulary (no download). They are for tests,
docs and a first try of ``sparsevdit profile|search|generate --pipeline tiny:NAME``: their videos are
noise (random weights), but every code path of a real pipeline runs. ``TINY_SIZES`` are sizes whose
token grids hold enough blocks to search (block size 16).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES = ("wan", "cogvideox", "hunyuan")
# frames, height, width (pixels) and text length per family: latents of 8 x 8 (or 16 x 16) tokens per frame
TINY_SIZES = {"wan": {"frames": 17, "height": 128, "width": 128, "max_sequence_length": 16},
              "cogvideox": {"frames": 9, "height": 128, "width": 128, "max_sequence_length": 16},
              "hunyuan": {"frames": 9, "height": 64, "width": 64, "max_sequence_length": 16}}
# extra call arguments a tiny pipeline needs (its tokenizer has no chat template tokens to crop)
TINY_CALL = {"hunyuan": {"prompt_template": {"template": "{}", "crop_start": 0}}}

_WORDS = """a an the and of in on at with to from by over under near through across into
cat dog bird fish horse person man woman child robot car boat train plane ball tree flower river ocean sea
sky cloud sun moon star mountain hill city street road forest field beach desert snow rain fire light water
walks runs jumps flies swims rolls bounces spins falls rises moves dances sits stands waves glows
red green blue yellow white black orange purple pink brown gray golden silver bright dark small big tall
slow fast calm busy old new wooden glass stone metal realistic cinematic style video scene shot close view
low quality blurry static still worst bad ugly noise""".split()


def _tokenizer(max_length: int = 64):
    """A word-level fast tokenizer: whitespace words of a fixed vocabulary, unknown words -> <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "<s>"] + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>", model_max_length=max_length)


def vocab_size() -> int:
    return len(_WORDS) + 4


def _needs_transformers():
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the tiny pipelines need the transformers package ({exc}): pip install transformers") from exc


def build(family: str, seed: int = 0) -> Any:
    """A tiny real diffusers pipeline of ``family`` (wan, cogvideox, hunyuan), random weights from ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny pipeline {family!r}; choose from {', '.join('tiny:' + f for f in FAMILIES)}")
    _needs_transformers()
    torch.manual_seed(seed)
    pipe = {"wan": _wan, "cogvideox": _cogvideox, "hunyuan": _hunyuan}[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    text = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, feed_forward_proj="gated-gelu"))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                                        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return WanPipeline(tokenizer=_tokenizer(), text_encoder=text.eval(), vae=vae.eval(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer.eval())


def _cogvideox():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    text = T5EncoderModel(T5Config(vocab_size=vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8))
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                              time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=16,
                                              sample_height=16, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                              max_text_seq_length=16, use_rotary_positional_embeddings=True)
    return CogVideoXPipeline(tokenizer=_tokenizer(), text_encoder=text.eval(), vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=CogVideoXDDIMScheduler())


def _hunyuan():
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    v = vocab_size()
    llama = LlamaModel(LlamaConfig(vocab_size=v, hidden_size=16, intermediate_size=37, num_attention_heads=4,
                                   num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, eos_token_id=1,
                                   bos_token_id=3, hidden_act="gelu"))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=v, hidden_size=8, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, projection_dim=32, pad_token_id=0, eos_token_id=1,
                                        bos_token_id=3, hidden_act="gelu", max_position_embeddings=77))
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                    layers_per_block=1, act_fn="silu", norm_num_groups=4, scaling_factor=0.476986,
                                    spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True)
    transformer = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                                 num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                                 patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
                                                 pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))
    return HunyuanVideoPipeline(text_encoder=llama.eval(), tokenizer=_tokenizer(), transformer=transformer.eval(),
                                vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=clip.eval(), tokenizer_2=_tokenizer(77))
