"""CogVideoX / CogVideoX1.5 pipelines (``CogVideoXTransformer3DModel``): the text (``max_sequence_length``
tokens, 226 by default) is a prefix of the self-attention sequence; spatial patch ``patch_size``,
temporal ``patch_size_t`` (1.5 only, latent frames padded to a multiple of it)."""

from __future__ import annotations

from .base import register_runner
from .pipeline import PipelineRunner


@register_runner
class CogVideoXRunner(PipelineRunner):
    name = "cogvideox"
    transformer_class = "CogVideoXTransformer3DModel"
    default_text_length = 226

    @property
    def patch(self):
        cfg = self.pipe.transformer.config
        return (cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size)

    def text_layout(self):
        return self.text_length, "prefix"
