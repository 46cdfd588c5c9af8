"""Apply a SparsityPlan to diffusers' Wan2.1, CogVideoX and HunyuanVideo transformers.

``apply_diffusers(model_or_pipeline, plan, backend="auto")`` swaps each *self*-attention module's
processor (through the supported seam, ``module.set_processor``) for a sparsevdit processor that
reproduces the original processor's math (projections, QK norms, RoPE, text handling, output
projection) and replaces only the attention product by ``sparse_attention`` over ``[B, H, N, D]``
with the plan's per-head patterns for (layer, step). A layer without a plan entry at the current
step calls the original processor, unchanged. ``remove_diffusers(model)`` puts the original
processor objects back and removes the hook. The model's ``forward`` is never forked.

Layer indexing (plan layer ``i``; ``model_signature(model).num_layers`` of them):

- ``WanTransformer3DModel``: ``blocks[i].attn1`` (self-attention over the video tokens only; text
  enters through the cross-attention ``attn2``, which is left alone). Layout: ``TokenLayout(
  latent_frames / p_t, latent_height / p_h, latent_width / p_w)``, no text.
- ``CogVideoXTransformer3DModel``: ``transformer_blocks[i].attn1`` (joint attention; the text tokens
  come first). Layout: text ``prefix`` of ``encoder_hidden_states.shape[1]`` tokens (226 for the
  released models), then ``frames / patch_size_t x height / p x width / p`` video tokens.
- ``HunyuanVideoTransformer3DModel``: layers ``0 .. num_layers-1`` are the dual-stream blocks
  ``transformer_blocks[i].attn``, then layers ``num_layers .. num_layers+num_single_layers-1`` the
  single-stream blocks ``single_transformer_blocks[j].attn``; the token refiner's text-only attention
  is not indexed. Layout: video first, text ``suffix`` of the *padded* text length
  ``encoder_hidden_states.shape[1]`` (the pipeline pads prompts to ``max_sequence_length``, 256).

Text padding (HunyuanVideo). The model masks padded text *keys* (mask ``[B, 1, 1, N]``); every query
row, padded ones included, attends the valid keys. We keep the plan's layout (text counted with its
padding, so one plan serves every prompt) and compute exactly "pattern AND key is valid" by splitting
the keys in two disjoint sets and merging by log-sum-exp (FlashInfer's partial-attention merge):

1. key blocks (in each pattern's token ordering) that hold no masked key, in any sample of the batch:
   ``sparse_attention`` with the pattern restricted to those key blocks, ``return_lse=True``;
2. the few key blocks that hold a masked key (the tail text blocks): a dense masked attention of every
   query to those blocks' keys, keeping the pattern's block mask and the per-sample key mask;
3. ``out = out1 * exp(lse1 - lse) + out2 * exp(lse2 - lse)`` with ``lse = logaddexp(lse1, lse2)``.

Samples of a batch may have different valid lengths. When nothing is masked, step 1 is the plain
call. The merge needs a backend that returns the log-sum-exp (reference, flex, triton; not
masked_sdpa); the error says so. The all-dense plan reproduces the masked original to fp32 rounding.

The current denoising step reaches the processors through a forward pre-hook on the transformer
(``register_forward_pre_hook(with_kwargs=True)``) that reads its ``timestep`` argument: a timestep
value not seen on the previous call advances the step (so pipelines that call the transformer twice
per step for classifier-free guidance count once); a timestep *larger* than the previous one (a new
generation: schedulers count down) starts again at step 0 unless ``auto_reset=False``;
``reset_step(model)`` starts over by hand, ``set_step(model, i)`` pins a step (None: count again),
``step_history(model)`` lists the step of every forward so far. The hook also checks the run's token
layout against the plan's and refuses a mismatch with a PlanError naming both.

Apply a plan after ``fuse_qkv_projections()`` / ``set_attn_processor(...)``, not before: those
replace every processor, ours included.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..caches import BoundedCache
from ..kernels import sparse_attention
from ..layout import TokenLayout
from ..patterns import BlockPattern, BlockSelection
from ..patterns.base import num_blocks
from ..plan import MethodPlans, ModelSignature, PlanError, SparsityPlan

__all__ = [
    "apply_diffusers",
    "remove_diffusers",
    "reset_step",
    "set_step",
    "current_step",
    "step_history",
    "is_applied",
    "is_diffusers_model",
    "model_signature",
    "runtime_layout",
    "self_attention_modules",
    "supported_models",
    "sparse_attention_key_masked",
]

_STATE_ATTR = "_sparsevdit_state"
# What a layer's patterns are while a dynamic method runs: chosen in ``attend`` from that call's q and k.
DYNAMIC = type("DynamicPatterns", (), {"__repr__": lambda self: "DYNAMIC"})()
CAPTURE = type("Capture", (), {"__repr__": lambda self: "CAPTURE"})()  # the state's capture callback decides


# ---------------------------------------------------------------------------------------------
# model adapters: which modules are the plan's layers, the model signature, the run's layout
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelAdapter:
    class_name: str
    attention_modules: Callable[[Any], list]  # model -> self-attention modules, index = plan layer
    signature: Callable[[Any], ModelSignature]
    layout: Callable[[Any, dict], TokenLayout]  # (model, bound forward arguments) -> token layout
    make_processor: Callable[[Any, "_State", int], Any]  # (original processor, state, layer) -> processor


# class name -> module that defines ADAPTER (imported lazily: diffusers is an optional dependency)
_ADAPTER_MODULES = OrderedDict(
    WanTransformer3DModel="sparsevdit.integrations.diffusers_wan",
    CogVideoXTransformer3DModel="sparsevdit.integrations.diffusers_cogvideox",
    HunyuanVideoTransformer3DModel="sparsevdit.integrations.diffusers_hunyuan",
)


def supported_models() -> list[str]:
    """Class names of the diffusers transformers a plan can be applied to."""
    return list(_ADAPTER_MODULES)


def _known_class(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        if cls.__name__ in _ADAPTER_MODULES and cls.__module__.startswith("diffusers"):
            return cls.__name__
    return None


def _adapter(model: Any) -> ModelAdapter:
    name = _known_class(model)
    if name is None:
        raise TypeError(
            f"{type(model).__name__} is not a supported diffusers transformer; supported: {', '.join(supported_models())} "
            "(or a pipeline whose .transformer is one)"
        )
    return importlib.import_module(_ADAPTER_MODULES[name]).ADAPTER


def _transformer(model_or_pipeline: Any) -> Any:
    """The transformer of a pipeline (anything with ``.transformer``), or the model itself."""
    if _known_class(model_or_pipeline) is None:
        inner = getattr(model_or_pipeline, "transformer", None)
        if inner is not None and _known_class(inner) is not None:
            return inner
    return model_or_pipeline


def is_diffusers_model(obj: Any) -> bool:
    """True for a supported diffusers transformer, or a pipeline whose ``.transformer`` is one."""
    return _known_class(_transformer(obj)) is not None


def model_signature(model_or_pipeline: Any) -> ModelSignature:
    """What a plan must match: class name, number of indexed self-attention layers, heads, head_dim."""
    model = _transformer(model_or_pipeline)
    return _adapter(model).signature(model)


def self_attention_modules(model_or_pipeline: Any) -> list:
    """The self-attention modules a plan's layers index, in plan-layer order."""
    model = _transformer(model_or_pipeline)
    return _adapter(model).attention_modules(model)


def _bind_forward(model: Any, args: tuple, kwargs: dict) -> dict:
    try:
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    except TypeError:
        return dict(kwargs)
    return dict(bound.arguments)


def runtime_layout(model_or_pipeline: Any, *args, **kwargs) -> TokenLayout:
    """The token layout of a forward call with these arguments (as the transformer's ``forward``)."""
    model = _transformer(model_or_pipeline)
    return _adapter(model).layout(model, _bind_forward(model, args, kwargs))


# ---------------------------------------------------------------------------------------------
# state shared by the processors of one model, and the step hook
# ---------------------------------------------------------------------------------------------
def _timestep_key(t: Any) -> tuple[float, ...] | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        # distinct values: a CFG batch [t, t] and per-token timesteps (Wan2.2 TI2V) count as one step
        return tuple(float(x) for x in torch.unique(t.detach().flatten().float()).cpu().tolist())
    if isinstance(t, (int, float)):
        return (float(t),)
    try:
        return tuple(float(x) for x in t)
    except TypeError:
        return None


@dataclass(eq=False)
class _State:
    plan: SparsityPlan | None  # None until the first forward when a method is applied without a plan
    backend: str
    adapter: ModelAdapter
    methods: MethodPlans | None = None  # a method's plan for each layout the forwards show
    ultravico: Any = None  # methods.UltraViCo: logit damping on top of the plan (its dense layers included)
    damping: Any = None  # its kernels.damping.LogitDamping for the forward in progress
    auto_reset: bool = True
    step: int = 0
    last_timestep: tuple | None = None
    layout: TokenLayout | None = None  # layout of the forward in progress (checked == plan.layout)
    originals: list = field(default_factory=list)  # (module, original processor) per layer
    hook: Any = None
    pinned: int | None = None
    history: list = field(default_factory=list)
    # capture(layer, step, q, k, v) -> patterns | None (dense): every self-attention call goes through it
    # (the searches' runners measure and choose there; search/runners/pipeline.py)
    capture: Any = None
    _mask_cache: tuple | None = field(default=None, repr=False)

    @property
    def current(self) -> int:
        return self.step if self.pinned is None else self.pinned

    def patterns_for(self, layer: int) -> list[BlockPattern] | None:
        if self.capture is not None:
            return CAPTURE  # attend hands q, k, v to the capture callback
        dynamic = getattr(self.methods, "dynamic", None)
        if dynamic is not None and not dynamic.runs_dense(layer, self.current):
            return DYNAMIC  # attend selects the masks from this call's q and k
        pats = self.plan.patterns_for(layer, self.current)
        if pats is None and self.damping is not None:  # a dense layer goes through our backends too
            from ..patterns import build

            pats = [build("dense", self.plan.layout, block_size=self.plan.block_size)] * self.plan.model.num_heads
        return pats

    def observe_timestep(self, t: Any) -> None:
        key = _timestep_key(t)
        if key is None:
            return
        if self.last_timestep is None:
            self.step = 0
        elif key != self.last_timestep:
            if self.auto_reset and key and self.last_timestep and max(key) > max(self.last_timestep):
                self.step = 0  # timesteps count down within a generation: a larger one starts a new one
            else:
                self.step += 1
        self.last_timestep = key

    def check_tokens(self, n: int, where: str) -> TokenLayout:
        if self.layout is None:
            raise RuntimeError(
                f"{where}: no token layout for this call; sparse processors run inside the transformer's forward "
                "(its pre-hook records the layout), not when an attention module is called on its own"
            )
        if n != self.plan.layout.num_tokens:
            raise PlanError(
                "layout", str(self.plan.layout),
                f"a layout of {n} tokens, the sequence {where} attends over (the layout of the video being generated)",
            )
        return self.plan.layout

    def key_valid(self, mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
        """bool [B, N] of keys that may be attended, from a key-padding mask; None if all may be."""
        if mask is None:
            return None
        cached = self._mask_cache
        if cached is not None and cached[0] is mask and cached[1] == mask._version:
            return cached[2]
        valid = key_padding_mask(mask, batch, n)
        if bool(valid.all()):
            valid = None
        self._mask_cache = (mask, mask._version, valid)
        return valid


def key_padding_mask(mask: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """A boolean or additive attention mask that only masks keys, as bool [B, N] (True: attend)."""
    m = mask
    if m.dtype != torch.bool:
        m = m == 0 if m.is_floating_point() else m != 0
    while m.dim() > 2 and m.shape[1] == 1:
        m = m.squeeze(1)
    if m.dim() == 1:
        m = m[None]
    if m.dim() != 2 or m.shape[-1] != n or m.shape[0] not in (1, batch):
        raise ValueError(
            f"sparse attention takes a key-padding mask (shape [B, 1, 1, N] or [B, N], N = {n}); "
            f"got an attention mask of shape {tuple(mask.shape)}"
        )
    return m.expand(batch, n)


def _pre_hook(module, args, kwargs):
    state: _State | None = getattr(module, _STATE_ATTR, None)
    if state is None:
        return None
    bound = _bind_forward(module, args, kwargs)
    layout = state.adapter.layout(module, bound)
    if state.methods is not None:
        state.plan = state.methods.for_layout(layout)
    if layout != state.plan.layout:
        raise PlanError(
            "layout", str(state.plan.layout),
            f"{layout} (the token layout of this {type(module).__name__} forward: "
            "make the plan for this video size and text length, or generate at the plan's size)",
        )
    state.layout = layout
    state.damping = state.ultravico.damping_for(layout) if state.ultravico is not None else None
    state.observe_timestep(bound.get("timestep"))
    state.history.append(state.current)
    return None


def apply_diffusers(model_or_pipeline: Any, plan: SparsityPlan | MethodPlans, *, backend: str = "auto",
                    auto_reset: bool = True, ultravico=None):
    """Install sparse processors for ``plan`` on a diffusers transformer (or ``pipeline.transformer``).

    ``plan`` is a SparsityPlan, or a ``MethodPlans`` (a method without a plan file: its plan for each
    token layout is made when a forward shows the layout).

    Refuses a plan made for another model with PlanError (the layout is checked on every forward).
    Applying again replaces the previous plan. Returns what it was given. (Wan2.2-A14B pipelines hold
    a second expert, ``pipeline.transformer_2``: apply a plan made for it to it separately.)
    """
    if not isinstance(plan, (SparsityPlan, MethodPlans)):
        raise TypeError(f"plan must be a sparsevdit.SparsityPlan (or MethodPlans), got {type(plan).__name__}")
    model = _transformer(model_or_pipeline)
    adapter = _adapter(model)
    modules = adapter.attention_modules(model)
    sig = adapter.signature(model)
    if len(modules) != sig.num_layers:  # pragma: no cover - the adapters count the same modules
        raise RuntimeError(f"found {len(modules)} self-attention modules, expected {sig.num_layers}")
    methods = plan if isinstance(plan, MethodPlans) else None
    (methods.model_plan_check if methods else plan.check_model)(sig)
    if getattr(model, _STATE_ATTR, None) is not None:
        remove_diffusers(model)
    state = _State(plan=None if methods else plan, backend=backend, adapter=adapter, auto_reset=auto_reset,
                   methods=methods, ultravico=ultravico)
    for layer, module in enumerate(modules):
        original = module.processor
        state.originals.append((module, original))
        module.set_processor(adapter.make_processor(original, state, layer))
    state.hook = model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    setattr(model, _STATE_ATTR, state)
    return model_or_pipeline


def remove_diffusers(model_or_pipeline: Any):
    """Restore the original processors and remove the step hook; returns what it was given.

    A model without an applied plan is left as it is.
    """
    model = _transformer(model_or_pipeline)
    state: _State | None = getattr(model, _STATE_ATTR, None)
    if state is not None:
        for module, original in state.originals:
            module.set_processor(original)
        state.hook.remove()
        delattr(model, _STATE_ATTR)
    return model_or_pipeline


def is_applied(model_or_pipeline: Any) -> bool:
    return getattr(_transformer(model_or_pipeline), _STATE_ATTR, None) is not None


def _state(model_or_pipeline: Any) -> _State:
    model = _transformer(model_or_pipeline)
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise RuntimeError(f"no sparsevdit plan is applied to this {type(model).__name__} (use apply_diffusers)")
    return state


def reset_step(model_or_pipeline: Any) -> None:
    """Start counting denoising steps again from 0 (the next timestep seen is step 0)."""
    state = _state(model_or_pipeline)
    state.step, state.last_timestep = 0, None


def set_step(model_or_pipeline: Any, step: int | None) -> None:
    """Pin the denoising step the plan is asked for (None: count steps from the timesteps again)."""
    _state(model_or_pipeline).pinned = step


def current_step(model_or_pipeline: Any) -> int:
    """The step the processors use now (the pinned one, if any)."""
    return _state(model_or_pipeline).current


def step_history(model_or_pipeline: Any) -> list[int]:
    """The step each transformer forward since ``apply_diffusers`` ran at."""
    return list(_state(model_or_pipeline).history)


# ---------------------------------------------------------------------------------------------
# processors: shared base
# ---------------------------------------------------------------------------------------------
class SparseProcessorBase:
    """Holds the original processor (for dense layers and removal), the shared state and the layer."""

    def __init__(self, original: Any, state: _State, layer: int):
        self.original = original
        self.state = state
        self.layer = layer

    # diffusers sets these on processors (set_attention_backend, context parallel): pass them through
    @property
    def _attention_backend(self):
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.original._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.original._parallel_config = value

    def patterns(self) -> list[BlockPattern] | None:
        return self.state.patterns_for(self.layer)

    def attend(self, q, k, v, patterns, *, n: int, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Sparse attention over [B, H, N, D] with this layer's patterns (and a key-padding mask)."""
        from .context_parallel import is_context_parallel, ulysses_attend

        if is_context_parallel(self._parallel_config):  # this rank holds N / P tokens: Ulysses sees them all
            return ulysses_attend(self, q, k, v, patterns, key_valid=key_valid, attention=sparse_attention_key_masked,
                                  dynamic=patterns is DYNAMIC, capture=patterns is CAPTURE)
        layout = self.state.check_tokens(n, f"layer {self.layer}")
        if patterns is CAPTURE:
            capture = self.state.capture
            patterns = capture(self.layer, self.state.current, q, k, v)
            if patterns is None:  # dense, as the model's own processor computes it
                mask = None if key_valid is None else key_valid[:, None, None, :]
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return sparse_attention_key_masked(q, k, v, patterns, layout=layout, key_valid=key_valid,
                                               backend=getattr(capture, "backend", self.state.backend))
        if patterns is DYNAMIC:
            patterns = self.state.methods.dynamic.patterns_for(self.layer, self.state.current, q, k, layout, v=v)
        return sparse_attention_key_masked(q, k, v, patterns, layout=layout, key_valid=key_valid, backend=self.state.backend,
                                           damping=self.state.damping)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer}, original={type(self.original).__name__})"


# ---------------------------------------------------------------------------------------------
# sparse attention with a key-padding mask, exact, through an LSE merge
# ---------------------------------------------------------------------------------------------
_TRIMMED = BoundedCache("diffusers.patterns_without_key_blocks", 256)
_COLUMNS = BoundedCache("diffusers.key_columns", 256)


def _flagged_key_blocks(layout: TokenLayout, ordering: str, block_size: int, masked: torch.Tensor) -> torch.Tensor:
    """bool [blocks]: key blocks (in ``ordering``) that hold a token flagged in ``masked`` (frame-major [N])."""
    nb = num_blocks(layout.num_tokens, block_size)
    reordered = masked[layout.permutation(ordering)]
    padded = torch.zeros(nb * block_size, dtype=torch.bool)
    padded[: layout.num_tokens] = reordered
    return padded.view(nb, block_size).any(1)


def _without_key_blocks(p: BlockPattern, flagged: torch.Tensor) -> BlockPattern:
    drop = [int(i) for i in flagged.nonzero().flatten()]

    def build() -> BlockPattern:
        mask = p.block_mask.clone()
        mask[:, flagged] = False
        return BlockPattern.from_block_mask(
            f"{p.name}-without-key-blocks", {**p.params, "without_key_blocks": drop}, p.layout, p.block_size, mask,
            p.ordering,
        )

    return _TRIMMED.get_or_build((p.key, tuple(drop)), build)


def _key_columns(p: BlockPattern, flagged: torch.Tensor, k_block: torch.Tensor, device) -> torch.Tensor:
    """The pattern's block mask at the keys of the flagged blocks, bool [blocks, K] on ``device`` (cached)."""
    key = (p.key, tuple(int(i) for i in flagged.nonzero().flatten()), str(device))
    return _COLUMNS.get_or_build(key, lambda: p.block_mask[:, k_block].to(device))


def sparse_attention_key_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patterns: BlockPattern | Sequence[BlockPattern] | BlockSelection,
    *,
    layout: TokenLayout,
    key_valid: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
    damping=None,
) -> torch.Tensor:
    """``sparse_attention`` over [B, H, N, D] where additionally only keys with ``key_valid`` [B, N] count.

    Exactly "pattern AND valid key" (see the module docstring): a sparse call over the key blocks free
    of masked keys, a dense masked attention to the (few) key blocks holding masked keys, LSE-merged.
    A query that keeps no valid key gets zeros. ``key_valid=None`` is plain ``sparse_attention``.
    """
    if key_valid is None:
        return sparse_attention(q, k, v, patterns, layout=layout, backend=backend, scale=scale, damping=damping)
    batch, heads, n, head_dim = q.shape
    key_valid = key_valid.to(device=q.device, dtype=torch.bool).expand(batch, n)
    if isinstance(patterns, BlockPattern):
        patterns = [patterns] * heads
    elif isinstance(patterns, BlockSelection) and patterns.ordering != "frame_major":
        patterns = patterns.to_patterns()  # the masked merge below handles any ordering of BlockPatterns
    elif not isinstance(patterns, BlockSelection):
        patterns = list(patterns)
        if len(patterns) != heads:
            raise ValueError(f"got {len(patterns)} patterns for {heads} heads: give one pattern, or one per head")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    masked_any = ~key_valid.all(0).cpu()  # [N], frame-major
    if not bool(masked_any.any()):
        return sparse_attention(q, k, v, patterns, layout=layout, backend=backend, scale=scale, damping=damping)
    if damping is not None:
        raise ValueError("UltraViCo's damping with padded text keys (a key-padding mask, as HunyuanVideo's) is not "
                         "implemented: the merge's dense part has no distance transform. Pad no text (prompts of "
                         "the full max_sequence_length) or apply without ultravico")

    if isinstance(patterns, BlockSelection):
        return _selection_key_masked(q, k, v, patterns, key_valid, masked_any, backend, scale)
    flagged = {}
    for p in patterns:
        sig = (p.ordering, p.block_size)
        if sig not in flagged:
            flagged[sig] = _flagged_key_blocks(layout, p.ordering, p.block_size, masked_any)
    trimmed = [_without_key_blocks(p, flagged[(p.ordering, p.block_size)]) for p in patterns]
    try:
        out1, lse1 = sparse_attention(q, k, v, trimmed, layout=layout, backend=backend, scale=scale, return_lse=True)
    except Exception as exc:
        if "log-sum-exp" in str(exc):
            raise type(exc)(
                f"{exc}\n(an attention mask with padded keys is merged by log-sum-exp: use a backend that returns it, "
                "e.g. reference or flex, or backend='auto')"
            ) from None
        raise

    out2 = torch.zeros(batch, heads, n, head_dim, dtype=torch.float32, device=q.device)
    lse2 = torch.full((batch, heads, n), float("-inf"), dtype=torch.float32, device=q.device)
    for (ordering, bs), blocks in flagged.items():
        token_in_flagged = blocks.repeat_interleave(bs)[:n]
        positions = token_in_flagged.nonzero().flatten()  # positions in the reordered sequence
        if positions.numel() == 0:
            continue
        keys = layout.permutation(ordering)[positions].to(q.device)  # frame-major indices of those keys
        k_block = positions // bs
        q_block = (layout.inverse_permutation(ordering) // bs).to(q.device)  # block of each query token
        valid = key_valid[:, keys]  # [B, K]
        k_sel, v_sel = k.index_select(2, keys), v.index_select(2, keys)
        for h, p in enumerate(patterns):
            if (p.ordering, p.block_size) != (ordering, bs) or p.is_empty:
                continue
            columns = _key_columns(p, blocks, k_block, q.device)  # [blocks, K]
            keep = columns[q_block][None] & valid[:, None, :]  # [B, N, K]
            out2[:, h], lse2[:, h] = _masked_keys_part(q[:, h], k_sel[:, h], v_sel[:, h], keep, scale)

    return _merge(out1, lse1, out2, lse2, q.dtype)


def _merge(out1, lse1, out2, lse2, dtype) -> torch.Tensor:
    """Two attentions over disjoint key sets as one, by their log-sum-exps."""
    lse = torch.logaddexp(lse1.float(), lse2)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1.float() - safe)[..., None]
    w2 = torch.exp(lse2 - safe)[..., None]
    return (out1.float() * w1 + out2 * w2).to(dtype)


def _masked_keys_part(q, k_sel, v_sel, keep, scale):
    """Attention of every query to the selected keys where ``keep`` [B, H or 1, N, K]: (out, lse) in fp32."""
    s = torch.matmul(q.float(), k_sel.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    probs = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    return torch.matmul(probs, v_sel.float()), lse


def _selection_key_masked(q, k, v, selection: BlockSelection, key_valid, masked_any, backend, scale):
    """``sparse_attention_key_masked`` for a dynamic method's device selection, on the device: the selection
    without the key blocks that hold masked keys (rebuilt where it lives), and the exact masked attention
    to those blocks' keys, merged. Frame-major order: a selection's blocks are the model's token blocks."""
    layout, bs, n = selection.layout, selection.block_size, q.shape[2]
    blocks = _flagged_key_blocks(layout, "frame_major", bs, masked_any)  # host, from the cached key mask
    mask = selection.block_mask()  # [H, nq, nk] on q's device
    trimmed = BlockSelection.from_block_mask(layout, bs, mask & ~blocks.to(q.device)[None, None, :],
                                             name=selection.name, params=selection.params)
    out1, lse1 = sparse_attention(q, k, v, trimmed, layout=layout, backend=backend, scale=scale, return_lse=True)
    keys = blocks.repeat_interleave(bs)[:n].nonzero().flatten()
    if keys.numel() == 0:
        return out1
    keys_dev = keys.to(q.device)
    q_block = torch.arange(n, device=q.device) // bs
    columns = mask[:, :, (keys // bs).to(q.device)]  # [H, nq, K]: which query blocks keep each key
    valid = key_valid[:, keys_dev][:, None, :]  # [B, 1, K]
    k_sel, v_sel = k.index_select(2, keys_dev), v.index_select(2, keys_dev)
    out2 = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lse2 = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    for h in range(q.shape[1]):  # one head at a time: [B, N, K] scores (HunyuanVideo: 119K x 384)
        out2[:, h], lse2[:, h] = _masked_keys_part(q[:, h], k_sel[:, h], v_sel[:, h], columns[h][q_block][None] & valid,
                                                   scale)
    return _merge(out1, lse1, out2, lse2, q.dtype)
