"""Diffusers pipelines as search runners: the calibration run and its sampling, shared by the families.

A calibration run (``PipelineCalibration``) is prompts x seeds, each one call of the pipeline (batch 1:
memory stays that of one generation at full size), every call with the same negative prompt, size,
steps and guidance; the noise of seed s is ``torch.Generator("cpu").manual_seed(s)``, so a dense and
a sparse run start from the same latents on any device. The compared output is the decoded video in
[-1, 1] (``[runs, 3, T, H, W]``), or with ``output="latents"`` (a VAE that does not fit beside the
model) the final latents divided by ``LATENT_SCALE`` = 3, so that a PSNR over the range 2 spans +-3
standard deviations of unit-variance latents (a convention: a latent PSNR is not a video PSNR). A denoising step is the pipeline's: the processors' step counter
restarts with each call (``reset_step``), and the two forwards of classifier-free guidance at one
timestep are one step (see ``integrations/diffusers.py``); with several calls per (step, layer) the
profile sums its statistics over them.

q, k, v are captured by installing our processors with a dense plan and a capture callback on their
shared state (``_State.capture``): the self-attention of every layer then runs through our processor,
which hands the post-RoPE q, k, v to the callback and runs what it returns (dense SDPA for None).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from ...layout import TokenLayout
from ...plan import ModelSignature
from .base import Runner, RunnerError


OUTPUTS = ("video", "latents")
LATENT_SCALE = 3.0  # latents / 3: +-3 standard deviations of unit-variance latents span the PSNR range of 2


@dataclass
class PipelineCalibration:
    """What a search samples with a diffusers pipeline. ``guidance`` None: the pipeline's default;
    ``max_sequence_length`` None: the family's default text length; ``call``: further keyword arguments
    of the pipeline call (e.g. HunyuanVideo's ``prompt_template``)."""

    prompts: tuple = ("a red ball bounces on the grass",)
    negative_prompt: str | None = None
    seeds: tuple = (0,)
    frames: int = 17
    height: int = 128
    width: int = 128
    steps: int = 4
    guidance: float | None = None
    block_size: int = 128
    backend: str = "auto"
    max_sequence_length: int | None = None
    call: dict = field(default_factory=dict)
    output: str = "video"  # what dense and sparse are compared on: the decoded video, or the final latents
    kind = "pipeline"

    def __post_init__(self):
        self.prompts = tuple(self.prompts)
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise RunnerError(f"prompts must be one or more non-empty strings, got {self.prompts!r}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise RunnerError(f"negative_prompt must be a string or None, got {self.negative_prompt!r}")
        self.seeds = tuple(self.seeds)
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise RunnerError(f"seeds must be integers >= 0, got {self.seeds!r}")
        for name in ("frames", "height", "width", "steps", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RunnerError(f"{name} must be an integer >= 1, got {value!r}")
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance)
                                               and self.guidance >= 0):
            raise RunnerError(f"guidance must be a finite number >= 0 or None, got {self.guidance!r}")
        if self.max_sequence_length is not None and (not isinstance(self.max_sequence_length, int)
                                                     or self.max_sequence_length < 1):
            raise RunnerError(f"max_sequence_length must be an integer >= 1 or None, got {self.max_sequence_length!r}")
        if not isinstance(self.call, dict):
            raise RunnerError(f"call must be a dict of pipeline arguments, got {self.call!r}")
        if self.output not in OUTPUTS:
            raise RunnerError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    @property
    def runs(self) -> int:
        return len(self.prompts) * len(self.seeds)

    def to_dict(self) -> dict:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        return {"kind": self.kind, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineCalibration":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def latent_frames(frames: int, temporal: int) -> int:
    """Latent frames of ``frames`` video frames under a causal VAE of temporal factor ``temporal``."""
    return (frames - 1) // temporal + 1


class PipelineRunner(Runner):
    """A diffusers pipeline whose ``transformer`` is a ``transformer_class``; families set the layout
    arithmetic and the call's arguments."""

    transformer_class = "?"
    default_text_length: int | None = None  # the pipeline's own max_sequence_length

    def __init__(self, pipe, calib=None):
        if calib is None:
            calib = PipelineCalibration()
        if not isinstance(calib, PipelineCalibration):
            raise RunnerError(f"a pipeline's calibration is a PipelineCalibration (prompts, seeds, size), "
                              f"got {type(calib).__name__}")
        if getattr(pipe, "transformer", None) is None:
            raise RunnerError(f"{type(pipe).__name__} has no .transformer: give the pipeline, not one of its parts")
        self.pipe, self.calib = pipe, calib
        self.check_size()

    @classmethod
    def accepts(cls, model) -> bool:
        return type(getattr(model, "transformer", None)).__name__ == cls.transformer_class

    def with_seeds(self, seeds: tuple) -> "PipelineRunner":
        return type(self)(self.pipe, replace(self.calib, seeds=tuple(seeds)))

    # family specifics ----------------------------------------------------------------------------
    def check_size(self) -> None:
        """Refuse sizes the pipeline would round or refuse (a layout must be what the model sees)."""
        c, s, t = self.calib, self.spatial_factor, self.temporal_factor
        if (c.frames - 1) % t:
            raise RunnerError(f"{self.name}: frames must be 1 + a multiple of {t} (the VAE's temporal factor), got {c.frames}")
        step = s * self.patch[1]
        for name in ("height", "width"):
            if getattr(c, name) % step:
                raise RunnerError(f"{self.name}: {name} must be a multiple of {step} pixels "
                                  f"(VAE factor {s} x patch {self.patch[1]}), got {getattr(c, name)}")

    @property
    def spatial_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_spatial", 8))

    @property
    def temporal_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_temporal", 4))

    @property
    def patch(self) -> tuple[int, int, int]:
        """(t, h, w) patch of the transformer."""
        raise NotImplementedError

    def text_layout(self) -> tuple[int, str]:
        """(text tokens in self-attention, position): none for Wan."""
        return 0, "none"

    def call_kwargs(self) -> dict:
        """Arguments of every call besides prompt and generator."""
        c = self.calib
        kw = {"num_frames": c.frames, "height": c.height, "width": c.width, "num_inference_steps": c.steps,
              "output_type": "latent" if c.output == "latents" else "pt"}
        if c.negative_prompt is not None:
            kw["negative_prompt"] = c.negative_prompt
        if c.guidance is not None:
            kw["guidance_scale"] = c.guidance
        if c.max_sequence_length is not None:
            kw["max_sequence_length"] = c.max_sequence_length
        return {**kw, **c.call}

    # the interface ---------------------------------------------------------------------------------
    def layout(self) -> TokenLayout:
        c, (pt, ph, pw) = self.calib, self.patch
        t = latent_frames(c.frames, self.temporal_factor)
        t = -(-t // pt)  # a temporal patch pads the latent frames (CogVideoX1.5)
        h, w = c.height // self.spatial_factor // ph, c.width // self.spatial_factor // pw
        n_text, where = self.text_layout()
        return TokenLayout(t, h, w, n_text, where)

    @property
    def text_length(self) -> int:
        return self.calib.max_sequence_length or self.default_text_length

    def signature(self) -> ModelSignature:
        from ...integrations.diffusers import model_signature

        return model_signature(self.pipe)

    @property
    def device(self) -> torch.device:
        return next(self.pipe.transformer.parameters()).device

    @property
    def progress_total(self) -> int:
        return self.calib.steps * self.calib.runs

    def sample(self, *, plan=None, backend=None, capture=None, progress=None) -> torch.Tensor:
        import sparsevdit
        from ...integrations import diffusers as dif
        from ...plan import DensePlans

        if plan is not None and capture is not None:
            raise ValueError("sample takes a plan or a capture callback, not both")
        installed = plan is not None or capture is not None
        if plan is not None:
            sparsevdit.apply(self.pipe, plan, backend=backend or self.backend)
        elif capture is not None:
            dif.apply_diffusers(self.pipe, DensePlans(self.signature(), block_size=self.block_size))
            dif._state(self.pipe).capture = self._checked(capture, backend or self.backend)
        try:
            outs = []
            for prompt in self.calib.prompts:
                for seed in self.calib.seeds:
                    if installed:
                        dif.reset_step(self.pipe)
                    outs.append(self._one(prompt, seed, progress))
        finally:
            if installed:
                sparsevdit.remove(self.pipe)
        return torch.cat(outs)

    def _checked(self, capture, backend: str):
        from ...integrations import diffusers as dif

        expected = self.layout()

        def call(layer, step, q, k, v):
            seen = dif._state(self.pipe).layout
            if seen != expected:
                raise RunnerError(f"{self.name}: the transformer attends over {seen}, but the runner computed {expected} "
                                  "from the calibration size (a layout rule of this family is wrong: report it)")
            return capture(layer, step, q, k, v)

        call.backend = backend
        return call

    def _one(self, prompt: str, seed: int, progress) -> torch.Tensor:
        kwargs = self.call_kwargs()
        if progress is not None:
            def on_step_end(pipe, i, t, callback_kwargs):
                progress()
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step_end
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            frames = self.pipe(prompt=prompt, generator=generator, **kwargs).frames
        if not isinstance(frames, torch.Tensor):
            frames = torch.as_tensor(frames)
        if self.calib.output == "latents":  # the pipeline's final latents, as it returns them, scaled
            return (frames.float().cpu() / LATENT_SCALE).contiguous()
        # [B, T, 3, H, W] in [0, 1] -> [B, 3, T, H, W] in [-1, 1], as the bundled sampler's videos
        return (frames.float().cpu().permute(0, 2, 1, 3, 4) * 2 - 1).contiguous()

    def describe(self) -> dict:
        return {**super().describe(), "pipeline": type(self.pipe).__name__}
