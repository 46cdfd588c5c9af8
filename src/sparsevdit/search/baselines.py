"""Baselines the searches are compared against on the bundled model.

- ``uniform_plan``: every head of every layer at every step the same pattern (all diagonal, or all
  multi_diagonal, at one width).

Sparse VideoGen's online per-head choice is a method of its own (``methods/svg.py``); the fidelity
study runs it through ``apply(model, method="svg")``.
"""

from __future__ import annotations

from ..plan import SparsityPlan
from .common import CalibrationConfig


def uniform_plan(model, calib: CalibrationConfig, pattern: str, **params) -> SparsityPlan:
    from ..integrations.bundled import model_signature

    plan = SparsityPlan.uniform(model_signature(model), calib.layout(model), pattern, params, block_size=calib.block_size)
    plan.metadata = {"algorithm": f"uniform {pattern}", "params": params}
    return plan
