"""Plans on the bundled ``VideoDiT``: install, follow the denoising step, remove.

``apply_bundled(model, plan)`` registers one forward pre-hook on the model (never a forked
``forward``). Before every forward it

1. works out the clip's token layout from the input ``x`` and refuses a plan made for another
   layout (``PlanError`` naming both layouts and the clip size that fits the plan);
2. works out the denoising step from the timestep ``t``: the first call, or a ``t`` larger than the
   previous call's, starts step 0 (a new sampling run: flow time falls from 1 to 0); a smaller ``t``
   is the next step; the same ``t`` again (e.g. separate conditional / unconditional calls) is the same
   step. ``set_step(model, i)`` pins the step explicitly (``None`` returns to counting);
3. sets each block's self-attention patterns to ``plan.patterns_for(layer, step)`` (None = dense).

``remove_bundled(model)`` removes the hook and restores dense attention.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..layout import TokenLayout
from ..models.vdit import VideoDiT
from ..patterns import BlockPattern
from .. import patterns as P
from ..methods.ultravico import UltraViCo
from ..plan import MethodPlans, ModelSignature, PlanError, SparsityPlan

CLASS_NAME = "VideoDiT"
_STATE_ATTR = "_sparsevdit_plan_state"


def model_signature(model: VideoDiT) -> ModelSignature:
    """What a plan for this model must say: class name, layers, heads, head dim."""
    return config_signature(model.cfg)


def config_signature(cfg) -> ModelSignature:
    """``model_signature`` of a VideoDiT of this VDiTConfig, without building the model."""
    return ModelSignature(CLASS_NAME, cfg.depth, cfg.heads, cfg.head_dim)


def pixel_size(model: VideoDiT, layout: TokenLayout) -> str:
    """The clip size (frames x height x width pixels) that has ``layout`` on this model."""
    p = model.cfg.patch
    return f"{layout.frames} frames of {layout.height * p}x{layout.width * p} px"


def check_layout(plan: SparsityPlan, model: VideoDiT, layout: TokenLayout) -> None:
    """PlanError naming both layouts if ``plan`` was made for clips of another size."""
    if plan.layout != layout:
        p = model.cfg.patch
        raise PlanError(
            "layout",
            f"{plan.layout} ({pixel_size(model, plan.layout)})",
            f"{layout} (the clip being generated: {pixel_size(model, layout)}); generate with "
            f"--frames {plan.layout.frames} --height {plan.layout.height * p} --width {plan.layout.width * p} "
            "or search a plan for this size",
        )


def plan_patterns(plan: SparsityPlan, model: VideoDiT, layout: TokenLayout, step: int) -> list[list[BlockPattern] | None]:
    """Each layer's per-head patterns at denoising ``step`` (None where the layer runs dense).

    Refuses (PlanError) a plan made for another model or another layout.
    """
    plan.check_model(model_signature(model))
    check_layout(plan, model, layout)
    return [plan.patterns_for(layer, step) for layer in range(model.cfg.depth)]


@dataclass
class _State:
    plan: SparsityPlan | None  # None until the first forward when a method is applied without a plan
    backend: str
    methods: MethodPlans | None = None  # a method's plan for each layout the forwards show
    ultravico: UltraViCo | None = None  # logit damping on top of the plan (its dense layers included)
    handle: torch.utils.hooks.RemovableHandle | None = None
    step: int = -1
    last_t: float | None = None
    pinned: int | None = None
    history: list = field(default_factory=list)  # steps seen by successive forwards (for tests, debugging)

    def advance(self, t: torch.Tensor) -> int:
        value = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
        if self.last_t is None or value > self.last_t + 1e-9:
            self.step = 0
        elif value < self.last_t - 1e-9:
            self.step += 1
        self.last_t = value
        return self.step if self.pinned is None else self.pinned


def _pre_hook(module: VideoDiT, args, kwargs):
    state: _State = getattr(module, _STATE_ATTR)
    x = args[0] if args else kwargs["x"]
    t = args[1] if len(args) > 1 else kwargs["t"]
    frames, height, width = x.shape[2:]
    layout = module.cfg.layout(frames, height, width)
    if state.methods is not None:
        state.plan = state.methods.for_layout(layout)
    step = state.advance(t)
    state.history.append(step)
    per_layer = plan_patterns(state.plan, module, layout, step)
    damping = None
    if state.ultravico is not None:  # every layer through sparse_attention, so the damping reaches it
        damping = state.ultravico.damping_for(layout)
        dense = [P.build("dense", layout, block_size=state.plan.block_size)] * module.cfg.heads
        per_layer = [dense if pats is None else pats for pats in per_layer]
    module.set_patterns(per_layer, backend=state.backend)
    dynamic = getattr(state.methods, "dynamic", None)
    for layer, attn in enumerate(module.attention_modules()):
        attn.damping = damping
        attn.selector = None if dynamic is None else functools.partial(dynamic.patterns_for, layer, step)
    return None


def apply_bundled(model: VideoDiT, plan: SparsityPlan | MethodPlans, *, backend: str = "auto",
                  ultravico: UltraViCo | None = None) -> VideoDiT:
    """Install ``plan`` (or a method's plans, ``MethodPlans``) on ``model``, replacing any installed
    before, with UltraViCo's damping on top when given; returns the model."""
    methods = plan if isinstance(plan, MethodPlans) else None
    (methods.model_plan_check if methods else plan.check_model)(model_signature(model))
    if is_applied(model):
        remove_bundled(model)
    state = _State(None if methods else plan, backend, methods, ultravico)
    setattr(model, _STATE_ATTR, state)
    state.handle = model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    return model


def remove_bundled(model: VideoDiT) -> VideoDiT:
    """Remove an installed plan: dense attention again (a model without a plan is left as it is)."""
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        if state.handle is not None:
            state.handle.remove()
        delattr(model, _STATE_ATTR)
    model.clear_patterns()
    for attn in model.attention_modules():
        attn.backend = "auto"
    return model


def is_applied(model: VideoDiT) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def installed_plan(model: VideoDiT) -> SparsityPlan | None:
    state = getattr(model, _STATE_ATTR, None)
    return None if state is None else state.plan


def set_step(model: VideoDiT, step: int | None) -> None:
    """Pin the denoising step the installed plan uses (None: count steps from the timesteps again)."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise RuntimeError("no plan is installed on this model: call sparsevdit.integrations.apply(model, plan) first")
    state.pinned = step


def step_history(model: VideoDiT) -> list[int]:
    """The step each forward since ``apply`` ran at (what the plan was asked for)."""
    state = getattr(model, _STATE_ATTR, None)
    return [] if state is None else list(state.history)
