"""Offline sparse-pattern search: profile a model, predict kernel time, choose a pattern per head.

Algorithms are registered by name (``available_algorithms()``, ``@register_algorithm("name")``);
each is ``fn(model, calib, *, cost, console=None, progress=True, **options) -> SparsityPlan``, where
``model, calib`` is a search runner (``runners``; calib None) or a model with its calibration:

- ``sparse-vdit``: the Sparse-vDiT paper's greedy sequential rule (``sparse_vdit.py``).
- ``budget``: cheapest pattern per head under an error budget, from a profile (``budget.py``).

``run_search(name, model, calib, **options)`` runs one by name. ``docs/search.md`` describes both.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ..plan import SparsityPlan
from .budget import BudgetSettings, budget_search
from .candidates import Candidate, default_candidates
from .common import CalibrationConfig
from .cost import CostModel
from .profile import Profile, run_profile
from .sparse_vdit import SparseVDiTSettings, sparse_vdit_search

Algorithm = Callable[..., SparsityPlan]
_ALGORITHMS: dict[str, Algorithm] = {}

__all__ = [
    "BudgetSettings", "CalibrationConfig", "Candidate", "CostModel", "Profile", "SparseVDiTSettings",
    "available_algorithms", "budget_search", "default_candidates", "get_algorithm", "register_algorithm",
    "run_profile", "run_search", "sparse_vdit_search",
]


def register_algorithm(name: str) -> Callable[[Algorithm], Algorithm]:
    """Register ``fn(model, calib, *, cost, console=None, progress=True, **options) -> SparsityPlan``."""

    def wrap(fn: Algorithm) -> Algorithm:
        _ALGORITHMS[name] = fn
        return fn

    return wrap


def available_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown search algorithm {name!r}; available: {', '.join(available_algorithms())}")
    return _ALGORITHMS[name]


def algorithm_options(name: str) -> list[str]:
    """The keyword options an algorithm takes (besides model, calib, cost, console, progress)."""
    sig = inspect.signature(get_algorithm(name))
    return [p for p in sig.parameters if p not in ("model", "calib", "cost", "console", "progress")]


def run_search(name: str, model, calib: CalibrationConfig, *, cost: CostModel | None = None, console=None,
               progress: bool = True, **options) -> SparsityPlan:
    fn = get_algorithm(name)
    allowed = algorithm_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"search algorithm {name!r} has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    return fn(model, calib, cost=cost or CostModel.flops(), console=console, progress=progress, **options)


@register_algorithm("sparse-vdit")
def _sparse_vdit(model, calib, *, cost, console=None, progress=True, lam: float = 0.5, epsilon: float = 1.0,
                 mode_density: float = 0.2, rows_per_block: int | None = None, dense_video=None) -> SparsityPlan:
    settings = SparseVDiTSettings(lam=lam, epsilon=epsilon, mode_density=mode_density, rows_per_block=rows_per_block)
    return sparse_vdit_search(model, calib, settings, cost=cost, dense_video=dense_video, console=console, progress=progress)


@register_algorithm("budget")
def _budget(model, calib, *, cost, console=None, progress=True, target_psnr: float | None = None,
            max_rel_error: float | None = None, max_time: float | None = None, step_ranges: int | None = None,
            dense_warmup_steps: int = 0, dense_layers=(), layer_sensitivity: bool = False,
            step_sensitivity: bool = False, profile: Profile | None = None, rows_per_block: int | None = 8, bisection_steps: int = 7,
            psnr_seeds=(), cache: dict | None = None) -> SparsityPlan:
    from .runners import as_runner

    runner = as_runner(model, calib if profile is None else profile.calib)
    settings = BudgetSettings(target_psnr=target_psnr, max_rel_error=max_rel_error, max_time=max_time,
                              step_ranges=step_ranges, dense_warmup_steps=dense_warmup_steps,
                              dense_layers=tuple(dense_layers), layer_sensitivity=layer_sensitivity,
                              step_sensitivity=step_sensitivity, bisection_steps=bisection_steps,
                              psnr_seeds=tuple(psnr_seeds), backend=runner.backend)
    if profile is None:
        profile = run_profile(runner, rows_per_block=rows_per_block, console=console, progress=progress)
    elif profile.model != runner.signature().to_dict():
        raise ValueError(f"the profile was measured on {profile.model}, not on this model ({runner.signature().to_dict()})")
    return budget_search(profile, cost, settings, model=runner, console=console, cache=cache)
