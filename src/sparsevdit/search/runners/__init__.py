"""What a calibration run of a model is, for the searches: one runner per model family.

A runner knows its model's plan signature and token layout, and how to sample its calibration inputs
(``sample``): with a plan applied, or with a ``capture(layer, step, q, k, v)`` callback that sees every
self-attention call's post-RoPE q, k, v ``[B, H, N, D]`` and returns the patterns that call runs
(None: dense). The output is what the searches compare, dense against sparse from the same noise
(the decoded video in [-1, 1], ``[n, 3, T, H, W]``, float32 on the CPU). ``profile``, the ``budget`` and
``sparse-vdit`` searches and the fidelity study use only this interface, so a plan can be searched
for any integrated model:

- ``bundled``: our VideoDiT (``runners/bundled.py``): classes and seeds, its own sampler;
- ``wan``, ``cogvideox``, ``hunyuan``: diffusers pipelines (``runners/pipeline.py`` and one file per
  family): prompts, negative prompt, seeds, frames / height / width, steps, guidance; q, k, v are
  captured through the processors ``sparsevdit.apply`` installs (never a forked ``forward``).

``as_runner(model_or_runner, calib)`` gives the runner of a model (a bundled model with a
``CalibrationConfig``, a pipeline with a ``PipelineCalibration``); a runner is returned as it is.
"""

from __future__ import annotations

from typing import Any

from . import bundled, cogvideox, hunyuan, wan  # noqa: F401  (each registers its runner)
from .base import Runner, RunnerError, register_runner, registered

__all__ = ["Runner", "RunnerError", "as_runner", "available_runners", "register_runner", "runner_class"]


def available_runners() -> list[str]:
    return sorted(registered())


def runner_class(name: str) -> type[Runner]:
    runners = registered()
    if name not in runners:
        raise RunnerError(f"no runner {name!r}; registered: {', '.join(sorted(runners))}")
    return runners[name]


def as_runner(model_or_runner: Any, calib: Any = None) -> Runner:
    """The runner of a model with its calibration (a Runner is returned as it is)."""
    if isinstance(model_or_runner, Runner):
        return model_or_runner
    runners = registered()
    for cls in runners.values():
        if cls.accepts(model_or_runner):
            return cls(model_or_runner, calib)
    raise RunnerError(f"no runner takes a {type(model_or_runner).__name__}: searches run on the bundled VideoDiT and "
                      f"on diffusers Wan, CogVideoX and HunyuanVideo pipelines ({', '.join(sorted(runners))})")
