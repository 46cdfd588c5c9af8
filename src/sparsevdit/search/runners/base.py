"""The runner interface and its registry (see ``runners/__init__.py``)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from ...layout import TokenLayout
from ...plan import ModelSignature

# capture(layer, step, q, k, v) -> the patterns this call runs (one per head), or None: dense
Capture = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], Any]


class RunnerError(ValueError):
    """A model or calibration a runner cannot take; the message names what and how to fix it."""


class Runner:
    """One model and its calibration inputs. Subclasses set ``name`` and implement the methods below."""

    name = "?"
    calib: Any  # has .steps, .block_size, .backend, .to_dict()

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether this runner family takes ``model`` (``as_runner`` asks every registered runner)."""
        raise NotImplementedError

    def layout(self) -> TokenLayout:
        raise NotImplementedError

    def signature(self) -> ModelSignature:
        raise NotImplementedError

    @property
    def steps(self) -> int:
        return self.calib.steps

    @property
    def block_size(self) -> int:
        return self.calib.block_size

    @property
    def backend(self) -> str:
        return self.calib.backend

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def batch(self) -> int:
        """Batch of one self-attention call (memory estimates)."""
        return 1

    def sample(self, *, plan=None, backend: str | None = None, capture: Capture | None = None,
               progress: Callable[[], None] | None = None) -> torch.Tensor:
        """The calibration run's output with ``plan`` applied, or with ``capture`` on every self-attention
        call (at most one of them); ``progress()`` after every denoising step."""
        raise NotImplementedError

    def with_seeds(self, seeds: tuple) -> "Runner":
        """The same model and calibration run on other noise seeds (the bundled model: seed s draws class
        s % classes); what ``budget --psnr-seeds`` checks its target on."""
        raise NotImplementedError

    def recording_gain(self, gain: torch.Tensor):
        """A context in which ``gain[step, layer]`` is set to the mean squared gate on each block's
        attention branch (an attention error reaches the residual stream scaled by it); models without
        such a gate leave it at 1."""
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"runner": self.name, "calibration": self.calib.to_dict()}


_RUNNERS: dict[str, type[Runner]] = {}


def registered() -> dict[str, type[Runner]]:
    """The registered runner classes by name (``runners/__init__.py`` imports every family first)."""
    return dict(_RUNNERS)


def register_runner(cls: type[Runner]) -> type[Runner]:
    if cls.name in _RUNNERS:
        raise ValueError(f"a runner named {cls.name!r} is registered already")
    _RUNNERS[cls.name] = cls
    return cls
