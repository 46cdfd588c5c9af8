"""Applying a SparsityPlan to a model: ``apply(model_or_pipeline, plan)`` and ``remove(...)``.

Our bundled ``VideoDiT`` is handled in ``bundled.py``; diffusers transformers and pipelines
(Wan, CogVideoX, HunyuanVideo) in ``diffusers.py``, imported only when such an object is given, so
diffusers stays an optional dependency.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..plan import DensePlans, DynamicPlans, MethodPlans, SparsityPlan
from .bundled import apply_bundled, is_applied, model_signature, plan_patterns, remove_bundled, set_step, step_history

__all__ = ["apply", "remove", "model_signature", "plan_patterns", "set_step", "step_history", "is_applied"]


def _is_bundled(obj) -> bool:
    from ..models.vdit import VideoDiT

    return isinstance(obj, VideoDiT)


def _looks_like_diffusers(obj) -> bool:
    """A diffusers object (or a subclass of one), or a pipeline holding one as ``.transformer``."""
    classes = list(type(obj).__mro__) + list(type(getattr(obj, "transformer", None)).__mro__)
    return any((c.__module__ or "").split(".")[0] == "diffusers" for c in classes)


def _diffusers_module():
    try:
        from . import diffusers as integration
    except ImportError as exc:
        raise ImportError(
            f"applying a plan to a diffusers model needs the diffusers package ({exc}); "
            "install it with `pip install diffusers`"
        ) from exc
    return integration


def _as_plan(plan) -> SparsityPlan:
    if isinstance(plan, SparsityPlan):
        return plan
    if isinstance(plan, (str, os.PathLike, Path)):
        return SparsityPlan.load(plan)
    raise TypeError(f"plan must be a SparsityPlan or the path of a plan file, got {type(plan).__name__}")


def apply(model_or_pipeline, plan=None, *, method: str | None = None, block_size: int = 128, backend: str = "auto",
          ultravico=None, **params):
    """Install sparse attention on a model or pipeline; returns it.

    Either ``plan`` (a SparsityPlan or a plan file): each denoising step then runs
    ``plan.patterns_for(layer, step)`` in every self-attention layer; or ``method`` (a name of
    ``sparsevdit methods``) with its parameters as keywords, e.g. ``apply(pipe, method="radial",
    dense_steps=12)``: every head of every layer gets the method's mask, made for the token layout each
    forward shows, at ``block_size``. A plan for another model or layout is refused with a
    ``PlanError``; an unknown method or parameter with a ``MethodError`` naming the allowed ones; an
    unknown ``backend`` with a ``BackendError`` listing the backends (here, not at the first forward).

    ``ultravico`` (a ``methods.UltraViCo`` or a dict of its fields, e.g. ``{"train_frames": 16}``) damps
    far logits on top of the plan or method, for videos longer than the model was trained on; with
    neither a plan nor a method, attention stays dense and is damped.
    """
    if backend != "auto":
        from ..kernels.registry import get_backend

        get_backend(backend)
    from ..methods.ultravico import UltraViCo

    ultravico = UltraViCo.of(ultravico)
    if plan is not None and method is not None or (plan is None and method is None and ultravico is None):
        raise TypeError("apply takes a plan or a method=NAME (with its parameters as keywords), exactly one of them "
                        "(or ultravico=... alone: dense attention, damped)")
    if plan is not None and params:
        raise TypeError(f"apply: parameters {', '.join(sorted(params))} belong to a method; a plan carries its own")
    if _is_bundled(model_or_pipeline):
        source = _source(plan, method, params, block_size, model_signature(model_or_pipeline))
        return apply_bundled(model_or_pipeline, source, backend=backend, ultravico=ultravico)
    if _looks_like_diffusers(model_or_pipeline):
        integration = _diffusers_module()
        if integration.is_diffusers_model(model_or_pipeline):
            source = _source(plan, method, params, block_size, integration.model_signature(model_or_pipeline))
            return integration.apply_diffusers(model_or_pipeline, source, backend=backend, ultravico=ultravico)
    raise TypeError(
        f"cannot apply a plan to a {type(model_or_pipeline).__module__}.{type(model_or_pipeline).__name__}: "
        "supported are sparsevdit's bundled VideoDiT and diffusers' WanTransformer3DModel, "
        "CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel (or pipelines holding one)"
    )


def _source(plan, method, params: dict, block_size: int, signature) -> SparsityPlan | MethodPlans:
    if plan is not None:
        return _as_plan(plan)
    if method is None:
        return DensePlans(signature, block_size=block_size)
    from ..methods import get_method

    if get_method(method).is_dynamic():
        return DynamicPlans(signature, method, params, block_size=block_size)
    return MethodPlans(signature, method, params, block_size=block_size)


def remove(model_or_pipeline):
    """Undo ``apply``: the model's own dense attention again; returns the model or pipeline."""
    if _is_bundled(model_or_pipeline):
        return remove_bundled(model_or_pipeline)
    if _looks_like_diffusers(model_or_pipeline):
        integration = _diffusers_module()
        if integration.is_diffusers_model(model_or_pipeline):
            return integration.remove_diffusers(model_or_pipeline)
    raise TypeError(
        f"cannot remove a plan from a {type(model_or_pipeline).__module__}.{type(model_or_pipeline).__name__}: "
        "not a model sparsevdit.apply supports"
    )
