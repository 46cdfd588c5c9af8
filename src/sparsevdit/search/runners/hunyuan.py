"""HunyuanVideo pipelines (``HunyuanVideoTransformer3DModel``): the prompt's ``max_sequence_length``
tokens (256 by default; padding masked) follow the video in the self-attention sequence. Guidance is
the distilled, embedded ``guidance_scale``; a negative prompt takes true CFG (``true_cfg_scale`` in
``call``), a second forward per step."""

from __future__ import annotations

from .base import register_runner
from .pipeline import PipelineRunner


@register_runner
class HunyuanRunner(PipelineRunner):
    name = "hunyuan"
    transformer_class = "HunyuanVideoTransformer3DModel"
    default_text_length = 256

    @property
    def patch(self):
        cfg = self.pipe.transformer.config
        return (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)

    def text_layout(self):
        return self.text_length, "suffix"
