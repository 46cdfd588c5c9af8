"""Our bundled VideoDiT: a calibration run is classes and seeds (``search.common.CalibrationConfig``),
sampled in one batch by the model's own sampler; q, k, v come from each attention module's ``capture``."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from ...layout import TokenLayout
from ...plan import ModelSignature
from .base import Runner, RunnerError, register_runner


@register_runner
class BundledRunner(Runner):
    name = "bundled"

    def __init__(self, model, calib=None):
        from ..common import CalibrationConfig

        if calib is None:
            calib = CalibrationConfig()
        if not isinstance(calib, CalibrationConfig):
            raise RunnerError(f"the bundled model's calibration is a CalibrationConfig (classes and seeds), "
                              f"got {type(calib).__name__}")
        self.model, self.calib = model, calib
        self._step = 0

    @classmethod
    def accepts(cls, model) -> bool:
        from ...models.vdit import VideoDiT

        return isinstance(model, VideoDiT)

    def layout(self) -> TokenLayout:
        return self.calib.layout(self.model)

    def signature(self) -> ModelSignature:
        from ...integrations.bundled import model_signature

        return model_signature(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def batch(self) -> int:
        return 2 * len(self.calib.seeds)  # every seed, conditional and unconditional

    def with_seeds(self, seeds: tuple) -> "BundledRunner":
        seeds = tuple(seeds)
        classes = tuple(s % self.model.cfg.num_classes for s in seeds)
        return BundledRunner(self.model, dataclasses.replace(self.calib, seeds=seeds, classes=classes))

    def _on_step(self, i: int) -> None:
        self._step = i

    def sample(self, *, plan=None, backend=None, capture=None, progress=None) -> torch.Tensor:
        from ..common import capturing, sample_video

        if plan is not None and capture is not None:
            raise ValueError("sample takes a plan or a capture callback, not both")
        if capture is None:
            return sample_video(self.model, self.calib, plan=plan, backend=backend, on_step=self._on_step,
                                progress=progress)
        run_backend = backend or self.calib.backend

        def make_hook(layer, attn):
            def hook(q, k, v):
                pats = capture(layer, self._step, q, k, v)
                attn.patterns = pats
                if pats is not None:
                    attn.backend = run_backend
            return hook

        with capturing(self.model, make_hook):
            return sample_video(self.model, self.calib, on_step=self._on_step, progress=progress)

    @contextlib.contextmanager
    def recording_gain(self, gain: torch.Tensor):
        """The bundled blocks' ``x + gate1 * attn(...)``: gate1 is the third of six modulation chunks of
        ``Block.forward(x, temb, ...)``."""
        def hook_for(layer):
            def hook(block, args):
                gate = block.modulation(args[1]).chunk(6, -1)[2]
                gain[self._step, layer] = float(gate.float().pow(2).mean())
            return hook

        handles = [blk.register_forward_pre_hook(hook_for(layer))
                   for layer, blk in enumerate(getattr(self.model, "blocks", [])) if hasattr(blk, "modulation")]
        try:
            yield gain
        finally:
            for h in handles:
                h.remove()
