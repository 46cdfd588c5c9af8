"""Wan2.1 / Wan2.2 pipelines (``WanTransformer3DModel``): video-only self-attention (text enters by
cross-attention), patch (1, 2, 2), VAE 4 x 8 x 8. A Wan2.2 A14B pipeline's ``transformer_2`` (the
low-noise expert) is not searched here: its plan is a separate one."""

from __future__ import annotations

from .base import register_runner
from .pipeline import PipelineRunner


@register_runner
class WanRunner(PipelineRunner):
    name = "wan"
    transformer_class = "WanTransformer3DModel"
    default_text_length = 512

    @property
    def patch(self):
        return tuple(self.pipe.transformer.config.patch_size)
