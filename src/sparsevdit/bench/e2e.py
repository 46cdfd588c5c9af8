"""End-to-end benchmark: one denoising forward of a diffusers video transformer, dense vs sparse.

What is timed: one call of a full-size, random-weight diffusers transformer (the transformer only: no
text encoder, no VAE, no scheduler) on random latents, random text embeddings and one timestep, in
bf16, eager unless ``--compile``, on one CUDA GPU:

- ``wan1.3b``: Wan2.1-T2V-1.3B at 480x832, 81 frames: latents [1, 16, 21, 60, 104] -> 21 x 30 x 52 =
  32,760 tokens (text enters by cross-attention);
- ``wan14b``: Wan2.1-T2V-14B at 720x1280, 81 frames: latents [1, 16, 21, 90, 160] -> 21 x 45 x 80 = 75,600;
- ``hunyuan720p``: HunyuanVideo at 720x1280, 129 frames: latents [1, 16, 33, 90, 160] -> 33 x 45 x 80 =
  118,800 video tokens + 256 text tokens (a suffix, padded as the pipeline pads prompts: the first 64
  valid, the rest masked) = 119,056;
- ``cogvideox1.5``: CogVideoX1.5-5B at 768x1360, 85 frames: latents [1, 22, 16, 96, 170] (frames first)
  -> 11 x 48 x 85 = 44,880 video tokens after 2 x 2 x 2 patches + 226 text tokens (a prefix) = 45,106,
  head_dim 64; RoPE tables random (speed does not depend on them).

Rows, side by side in one process on the same model object: ``dense`` is the unmodified diffusers
model with PyTorch SDPA restricted to cuDNN (``--sdpa``; a model whose dense attention cuDNN refuses,
e.g. for its text mask, falls back to PyTorch's choice, and the row says so); then
``sparsevdit.apply(model, plan)`` with an all-dense plan (a sanity row: it should match dense within
noise) and with plans of about 10%, 20%, 30% attention density, then one row per ``--method``
(``sparsevdit.apply(model, method=NAME, **params)``: a training-free method on every head, at its
defaults for the model family unless parameters are given), and ``sparsevdit.remove``. A dynamic
method's row (``topk``, ``svg``: the selection runs inside each forward from its q and k) makes every
forward a new denoising step, times whole ``reuse_every`` cycles and reports their mean (the
selections amortised as in sampling) and ``selection_ms``, the time inside ``select`` per forward
(CUDA events), with its share of the forward. The SDPA restriction holds for every row, so the
text cross-attention and everything else outside the self-attention product is the same code on
both sides; only the self-attention kernel differs.

Plans: every layer, heads alternating (shifted by one every layer) between a *spatial* head
(``union`` of ``diagonal``, a band in frame-major order, and ``vertical_stripe`` on the first frame's
key blocks) and a *temporal* head (``multi_diagonal``: the same place in every frame), as Sparse
VideoGen's spatial / temporal heads; each family's band width is bisected so its density is nearest
the target. Density is the fraction of query-key pairs kept (``BlockPattern.density``) averaged over
heads and layers. The plans are made with the model's own signature, so ``apply`` accepts them.

Timing: ``--warmup`` forwards (compilation, autotuning, caches), then the median of ``--rep`` forwards,
each bracketed by CUDA events. ``speedup = dense ms / ms``. ``rel_diff_vs_dense`` is the relative L2
difference of the output to the dense output: ~0 for the dense plan; for sparse plans it only says the
plan changed the output (random weights: no statement about video quality). ``backend_heads`` counts
head-calls per forward by the attention backend that ran them (``sdpa`` = PyTorch SDPA for all-dense
layers). ``--tiny`` runs a tiny random config on the CPU (for tests; its times mean nothing).

``--compile``: every transformer block is compiled (``torch.compile``, regional) except its
self-attention module, which stays eager in every row, dense and sparse alike: the compiled code
(norms, modulation, cross-attention, FFN) is then the same on both sides, and only the
self-attention differs. Warm-up then includes compilation (use ``--warmup 2`` or more).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from .. import patterns as P
from ..layout import TokenLayout
from ..methods import get_method
from ..plan import HeadSpec, LayerEntry, MethodPlans, ModelSignature, SparsityPlan
from .common import environment, gpu_slug, write_json
from .kernels import _with_width

_WAN_COMMON = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)


CLASSES = {"wan": "WanTransformer3DModel", "hunyuan": "HunyuanVideoTransformer3DModel",
           "cogvideox": "CogVideoXTransformer3DModel"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config: dict  # kwargs of the family's diffusers class
    latents: tuple  # hidden_states: [B, C, F, H, W] (wan, hunyuan) or [B, F, C, H, W] (cogvideox)
    text: tuple  # encoder_hidden_states [B, L, text_dim]
    block_size: int = 128
    full_size: bool = True
    family: str = "wan"
    valid_text: int | None = None  # hunyuan: text tokens not masked (the pipeline pads to L)

    @property
    def layout(self) -> TokenLayout:
        c = self.config
        if self.family == "cogvideox":
            _, f, _, h, w = self.latents
            p, p_t = c["patch_size"], c.get("patch_size_t") or 1
            return TokenLayout(f // p_t, h // p, w // p, text_tokens=self.text[1], text_position="prefix")
        _, _, f, h, w = self.latents
        if self.family == "hunyuan":
            p, p_t = c["patch_size"], c["patch_size_t"]
            return TokenLayout(f // p_t, h // p, w // p, text_tokens=self.text[1], text_position="suffix")
        p_t, p_h, p_w = c["patch_size"]
        return TokenLayout(f // p_t, h // p_h, w // p_w)

    @property
    def signature(self) -> ModelSignature:
        c = self.config
        layers = c["num_layers"] + c.get("num_single_layers", 0)
        return ModelSignature(CLASSES[self.family], layers, c["num_attention_heads"], c["attention_head_dim"])


_HUNYUAN = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                rope_theta=256.0, rope_axes_dim=(16, 56, 56))
_COGVIDEOX15 = dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
                    text_embed_dim=4096, num_layers=42, sample_width=300, sample_height=300, sample_frames=81,
                    patch_size=2, patch_size_t=2, max_text_seq_length=226, use_rotary_positional_embeddings=True,
                    patch_bias=False, norm_eps=1e-5)

MODELS = {
    "wan1.3b": ModelSpec(
        "wan1.3b", "Wan2.1-T2V-1.3B, 480x832, 81 frames",
        dict(_WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
        (1, 16, 21, 60, 104), (1, 512, 4096),
    ),
    "wan14b": ModelSpec(
        "wan14b", "Wan2.1-T2V-14B, 720x1280, 81 frames",
        dict(_WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
        (1, 16, 21, 90, 160), (1, 512, 4096),
    ),
    "hunyuan720p": ModelSpec(
        "hunyuan720p", "HunyuanVideo, 720x1280, 129 frames, 256 text tokens (64 valid)",
        _HUNYUAN, (1, 16, 33, 90, 160), (1, 256, 4096), family="hunyuan", valid_text=64,
    ),
    "cogvideox1.5": ModelSpec(
        "cogvideox1.5", "CogVideoX1.5-5B, 768x1360, 85 frames, 226 text tokens",
        _COGVIDEOX15, (1, 22, 16, 96, 170), (1, 226, 4096), family="cogvideox",
    ),
    # CPU smoke configurations (tests): 16 x 8 x 8 = 1,024 video tokens in blocks of 16.
    "tiny": ModelSpec(
        "tiny", "tiny random Wan config (CPU smoke test; times mean nothing)",
        dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32),
        (1, 4, 16, 16, 16), (1, 8, 16), block_size=16, full_size=False,
    ),
    "tiny-hunyuan": ModelSpec(
        "tiny-hunyuan", "tiny random HunyuanVideo config (CPU smoke test)",
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=False,
             text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)),
        (1, 4, 8, 16, 16), (1, 24, 16), block_size=16, full_size=False, family="hunyuan", valid_text=10,
    ),
    "tiny-cogvideox": ModelSpec(
        "tiny-cogvideox", "tiny random CogVideoX config (CPU smoke test)",
        dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
             text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16, sample_frames=13, patch_size=2,
             patch_size_t=2, max_text_seq_length=8, use_rotary_positional_embeddings=True, patch_bias=False),
        (1, 8, 4, 16, 16), (1, 8, 16), block_size=16, full_size=False, family="cogvideox",
    ),
}
SDPA_CHOICES = ("cudnn", "flash", "efficient", "math", "default")


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------
def _spatial_parts(width: int) -> list:
    return [{"name": "diagonal", "params": {"width": width}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}]


def mixed_plan(sig: ModelSignature, layout: TokenLayout, target: float, *, block_size: int = 128) -> SparsityPlan:
    """A plan of about ``target`` density over every layer: spatial and temporal heads alternating.

    Spatial: ``union(diagonal(width), vertical_stripe(sink_frames=1))`` (frame-major); temporal:
    ``multi_diagonal(width)`` (position-major). Head ``h`` of layer ``l`` is spatial when ``h + l`` is
    even. Widths are bisected per family so each family's density is nearest ``target``; the real
    density (from the block masks) is in ``metadata`` and ``plan_density``. ``target >= 1``: all dense.
    Only block-level index data is built (never a token-level mask).
    """
    if target >= 1.0:
        plan = SparsityPlan.uniform(sig, layout, "dense", block_size=block_size)
        plan.metadata.update({"target_density": 1.0, "recipe": "every head dense"})
        return plan
    if not 0.0 < target < 1.0:
        raise ValueError(f"target density must be in (0, 1], got {target}")
    spatial = _with_width(lambda w: P.build("union", layout, block_size=block_size, patterns=_spatial_parts(w)),
                          layout, target)
    temporal = _with_width(lambda w: P.build("multi_diagonal", layout, block_size=block_size, width=w), layout, target)
    heads = {0: HeadSpec("union", spatial.params), 1: HeadSpec("multi_diagonal", temporal.params)}
    entries = [
        LayerEntry(layer, tuple(heads[(h + layer) % 2] for h in range(sig.num_heads)))
        for layer in range(sig.num_layers)
    ]
    metadata = {
        "target_density": target,
        "recipe": "heads alternate (shifted each layer): spatial = union(diagonal, vertical_stripe sink_frames=1), "
                  "temporal = multi_diagonal; widths bisected to the target density",
        "spatial": {"width": spatial.params["patterns"][0]["params"]["width"], "density": spatial.density},
        "temporal": {"width": temporal.params["width"], "density": temporal.density},
    }
    return SparsityPlan(sig, layout, block_size, entries, metadata)


def method_defaults(spec: ModelSpec, method: str) -> dict:
    """A method's parameters for a model family where they differ from the method's own defaults:
    radial's and svg's preset of the family (CogVideoX has none of its own: HunyuanVideo's, no sink)."""
    if method in ("radial", "svg"):
        return {"model_family": "wan" if spec.family == "wan" else "hunyuan"}
    return {}


def plan_density(plan: SparsityPlan, step: int = 0) -> float:
    """Mean attention density over layers and heads (dense layers count 1), from the block masks."""
    return sum(plan.density(layer, step) for layer in range(plan.model.num_layers)) / plan.model.num_layers


# ---------------------------------------------------------------------------------------------
# model, inputs, timing
# ---------------------------------------------------------------------------------------------
def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    """Random-weight transformer of ``spec``'s family built directly on ``device`` in ``dtype`` (no fp32 CPU copy).

    As ``from_pretrained(torch_dtype=...)`` does, the parameters of the class's
    ``_keep_in_fp32_modules`` (time embedder, modulation tables, norms) are kept in float32.
    """
    import diffusers

    old_dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = getattr(diffusers, CLASSES[spec.family])(**spec.config)
    finally:
        torch.set_default_dtype(old_dtype)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    if dtype != torch.float32 and keep:
        for name, param in model.named_parameters():
            if any(k in name for k in keep):
                param.data = param.data.float()
    return model.eval().requires_grad_(False)


def make_inputs(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=device, dtype=dt)

    batch = spec.latents[0]
    inputs = {"hidden_states": randn(*spec.latents), "encoder_hidden_states": randn(*spec.text),
              "timestep": torch.full((batch,), 999.0, device=device)}
    if spec.family == "hunyuan":
        mask = torch.zeros(batch, spec.text[1], dtype=torch.long, device=device)
        mask[:, : spec.valid_text or spec.text[1]] = 1
        inputs.update(encoder_attention_mask=mask, pooled_projections=randn(batch, spec.config["pooled_projection_dim"]))
        if spec.config.get("guidance_embeds"):
            inputs["guidance"] = torch.full((batch,), 6000.0, device=device)  # the pipeline's 6.0 x 1000
    elif spec.family == "cogvideox":
        lay = spec.layout
        angles = randn(lay.video_tokens, spec.config["attention_head_dim"] // 2, dt=torch.float32)
        inputs["image_rotary_emb"] = (angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))
        inputs["timestep"] = inputs["timestep"].long()
    return inputs


def _blocks(model) -> list:
    """The transformer blocks of a Wan, HunyuanVideo or CogVideoX model."""
    return [b for name in ("blocks", "transformer_blocks", "single_transformer_blocks") for b in getattr(model, name, [])]


def compile_outside_self_attention(model) -> None:
    """``torch.compile`` each transformer block with its self-attention module left eager.

    The self-attention modules are where ``sparsevdit.apply`` swaps processors, so excluding them keeps
    the compiled code identical for the dense and the sparse rows (and keeps dynamo away from our dispatch).
    """
    import torch._dynamo

    from ..integrations.diffusers import self_attention_modules

    # 30-60 blocks share a few compiled graphs; processor swaps between rows add guards, not new code.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for attn in self_attention_modules(model):
        attn.forward = torch.compiler.disable(attn.forward)
    for block in _blocks(model):
        block.compile()


def _sdpa_context(choice: str):
    if choice == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[choice]
    return sdpa_kernel(backend)


@contextlib.contextmanager
def record_backends():
    """Counter of head-calls per attention backend chosen by ``sparse_attention`` inside the block."""
    from ..kernels import api

    counts: Counter = Counter()
    original, original_sel = api.select_backend, api.selection_backend

    def recording(name, call):
        backend = original(name, call)
        counts[backend.name] += call.heads
        return backend

    def recording_selection(name, call, selection):  # a dynamic selection run on the device index
        backend = original_sel(name, call, selection)
        if backend is not None:
            counts[backend.name] += call.heads
        return backend

    api.select_backend, api.selection_backend = recording, recording_selection
    try:
        yield counts
    finally:
        api.select_backend, api.selection_backend = original, original_sel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, warmup: int, rep: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``rep`` calls after ``warmup`` untimed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(rep):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def profile_forward(fn, device: torch.device, top: int = 25) -> list[dict]:
    """One ``fn()`` under ``torch.profiler``: the ``top`` kernels/ops by device (or CPU) time, in ms per forward.

    Says where a forward's time goes (attention kernel vs gathers, transposes, norms), which the
    end-to-end ratio alone does not.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    rows = []
    for ev in prof.key_averages():
        dev_us = getattr(ev, "self_device_time_total", None)
        if dev_us is None:  # older profilers
            dev_us = getattr(ev, "self_cuda_time_total", 0.0)
        us = dev_us if device.type == "cuda" else ev.self_cpu_time_total
        if us > 0:
            rows.append({"name": ev.key[:120], "ms": us / 1e3, "calls": ev.count})
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]


def _rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
@dataclass
class Settings:
    models: list
    densities: list
    backend: str = "auto"
    warmup: int = 2
    rep: int = 5
    device: str = "auto"
    sdpa: str | None = None  # None: cudnn on CUDA, default on CPU
    dense_plan: bool = True
    compile: bool = False
    profile: bool = False
    extra: dict = field(default_factory=dict)
    methods: list = field(default_factory=list)  # (method name, params) rows after the plans


class SelectionTimer:
    """Time spent inside a dynamic method's ``select`` calls: CUDA events on a GPU (recorded without a
    synchronisation, read after the timed forwards), wall time on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.calls, self._events, self._cpu_ms = device, 0, [], 0.0

    def reset(self) -> None:
        self.calls, self._events, self._cpu_ms = 0, [], 0.0

    @contextlib.contextmanager
    def __call__(self):
        self.calls += 1
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._cpu_ms += (time.perf_counter() - t0) * 1e3

    def total_ms(self) -> float:
        _sync(self.device)
        return self._cpu_ms + sum(float(s.elapsed_time(e)) for s, e in self._events)


def method_label(method: str, params: dict) -> str:
    """A method row's name: the method and the parameters that tell its rows apart."""
    shown = {k: v for k, v in params.items() if k in ("tau", "fraction", "reuse_every") and v is not None}
    return f"method {method}" + ("" if not shown else " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")")


def timed_dynamic(model, forward, measure, method: str, params: dict, spec: "ModelSpec", settings: "Settings",
                  device: torch.device):
    """A dynamic method's row: every forward is a new denoising step (``set_step``; at one pinned step the
    selection would be made once and reused), timed over whole ``reuse_every`` cycles that start at a
    selection step, so ``ms`` is the mean per step with the selections amortised as in a sampling run.
    ``selection_ms`` is the time inside ``select`` per timed forward (CUDA events), ``selection_share``
    its share of ``ms``; ``density`` is the mean over layers of the last timed forward's selections."""
    import sparsevdit
    from ..integrations.diffusers import _state, set_step
    from ..patterns import BlockSelection

    every = int(params.get("reuse_every", 1))
    dense_steps = int(params.get("dense_steps", 0))
    rep = -(-max(settings.rep, 1) // every) * every  # whole reuse cycles
    timer = SelectionTimer(device)
    step = [0]

    def stepping_forward():
        set_step(model, step[0])
        step[0] += 1
        dyn.history.clear()  # the selections of earlier forwards need not stay alive on the GPU
        return forward()

    def before_timing():
        first = max(step[0], dense_steps)  # the next selection step: dense_steps + a multiple of reuse_every
        step[0] = dense_steps + -(-(first - dense_steps) // every) * every
        timer.reset()

    sparsevdit.apply(model, method=method, block_size=spec.block_size, backend=settings.backend, **params)
    try:
        dyn = _state(model).methods.dynamic
        dyn.select_timer = timer
        out, times, heads, peak = measure(fn=stepping_forward, rep=rep, before_timing=before_timing)
        selection_ms = timer.total_ms() / rep
        selects = timer.calls / rep
        densities = [1.0 if x is None else x.density if isinstance(x, BlockSelection)
                     else statistics.fmean(p.density for p in x) for x in dyn.history]
        density = statistics.fmean(densities) if densities else 1.0
    finally:
        sparsevdit.remove(model)
    ms = statistics.fmean(times)
    used = "+".join(sorted(heads, key=lambda b: -heads[b])) if heads else "?"
    extra = {"ms": ms, "backends": used, "ms_median": statistics.median(times), "timed_forwards": rep,
             "selection_ms": selection_ms, "selection_share": selection_ms / ms, "selects_per_forward": selects,
             "density": density}
    return out, times, heads, peak, extra


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU here")
    return dev


def _log(*args) -> None:
    print(*args, flush=True)


def run(settings: Settings, log=_log, on_model=None) -> dict:
    """Run every model's rows; returns the result dict (see the module docstring).

    ``on_model(result_so_far)`` is called after each model (the CLI writes the JSON then, so a later
    model that fails leaves the earlier ones' rows on disk).
    """
    import sparsevdit
    from ..integrations.diffusers import model_signature, runtime_layout

    device = _resolve_device(settings.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sdpa = settings.sdpa or ("cudnn" if device.type == "cuda" else "default")
    for name in settings.models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        if MODELS[name].full_size and device.type != "cuda":
            raise RuntimeError(f"{name} is full size: it needs a CUDA GPU (use --tiny for a CPU smoke run)")
    targets = sorted({float(d) for d in settings.densities if 0 < float(d) < 1})
    rows, model_info = [], []
    profiles: list = []  # measure() appends one per row with --profile

    for name in settings.models:
        spec = MODELS[name]
        t0 = time.perf_counter()
        model = build_model(spec, device, dtype)
        if settings.compile:
            compile_outside_self_attention(model)
        inputs = make_inputs(spec, device, dtype)
        _sync(device)  # random initialisation runs asynchronously on a GPU
        build_s = time.perf_counter() - t0
        sig = model_signature(model)
        layout = runtime_layout(model, **inputs)
        if sig != spec.signature or layout != spec.layout:  # the spec's arithmetic and the adapter's must agree
            raise RuntimeError(f"{name}: model signature {sig} / layout {layout} differ from the spec's")
        params = sum(p.numel() for p in model.parameters())
        log(f"{name}: {spec.description}; {params / 1e9:.2f} B parameters, {layout.num_tokens:,} tokens "
            f"({layout}), {sig.num_layers} layers x {sig.num_heads} heads x {sig.head_dim}, {dtype}, "
            f"built in {build_s:.1f} s")

        def forward():
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0]

        def measure(fn=forward, rep=settings.rep, before_timing=None):
            """Warm-up forwards (the last one's output and backends are kept), then the timed ones."""
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with _sdpa_context(sdpa), record_backends() as counts:
                for _ in range(max(settings.warmup, 1)):
                    counts.clear()
                    out = fn()
                heads = dict(counts)  # head-calls per backend in one forward
                if before_timing is not None:
                    before_timing()
                times = time_calls(fn, 0, rep, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            if settings.profile:
                with _sdpa_context(sdpa):
                    profiles.append(profile_forward(forward, device))
            return out, times, heads, peak

        model_sdpa = sdpa
        try:
            dense_out, times, _, peak = measure()
        except RuntimeError as exc:
            if sdpa == "default" or "No available kernel" not in str(exc):
                raise
            # e.g. HunyuanVideo's text mask on a cuDNN that refuses it: PyTorch's own choice, said in the row
            log(f"  {sdpa} SDPA refused this model's dense attention ({str(exc).splitlines()[0][:100]}); "
                "using PyTorch's choice for every row of this model")
            sdpa = "default"
            dense_out, times, _, peak = measure()
        dense_ms = statistics.median(times)
        base = {"model": name, "tokens": layout.num_tokens, "block_size": spec.block_size}
        rows.append({**base, "row": "dense", "plan": None, "target_density": 1.0, "density": 1.0,
                     "backend": f"torch sdpa ({sdpa})", "backend_heads": None, "ms": dense_ms, "ms_all": times,
                     "speedup": 1.0, "rel_diff_vs_dense": 0.0, "peak_mem_gib": peak,
                     **({"profile": profiles[-1]} if settings.profile else {})})
        log(f"  dense ({sdpa} SDPA)        {dense_ms:10.1f} ms")

        def timed_sparse(install, **how):
            """``install()`` sparse attention, time the rows' forwards (``measure(**how)``), remove it: out,
            times, head-calls per backend, peak memory, median ms and the backends used (most head-calls first)."""
            install()
            try:
                out, times, heads, peak = measure(**how)
            finally:
                sparsevdit.remove(model)
            used = "+".join(sorted(heads, key=lambda b: -heads[b])) if heads else "?"
            return out, times, heads, peak, statistics.median(times), used

        cases = ([1.0] if settings.dense_plan else []) + targets
        for target in cases:
            t1 = time.perf_counter()
            plan = mixed_plan(sig, layout, target, block_size=spec.block_size)
            density = plan_density(plan)
            plan_s = time.perf_counter() - t1
            out, times, heads, peak, ms, used = timed_sparse(lambda: sparsevdit.apply(model, plan, backend=settings.backend))
            label = "plan dense" if target >= 1 else f"plan {target:.0%}"
            rows.append({**base, "row": label, "plan": plan.metadata, "target_density": target, "density": density,
                         "backend": used, "backend_heads": heads, "ms": ms, "ms_all": times, "speedup": dense_ms / ms,
                         "rel_diff_vs_dense": _rel_diff(out, dense_out), "peak_mem_gib": peak,
                         "plan_build_s": plan_s, **({"profile": profiles[-1]} if settings.profile else {})})
            log(f"  {label:12s} density {density:6.1%}  {ms:10.1f} ms  {dense_ms / ms:5.2f}x  backend {used}")
            del out

        for method, params in settings.methods:
            params = {**method_defaults(spec, method), **params}
            label = method_label(method, params)
            if get_method(method).is_dynamic():
                out, times, heads, peak, extra = timed_dynamic(model, forward, measure, method, params, spec, settings, device)
                ms, used = extra.pop("ms"), extra.pop("backends")
                density = extra["density"]
            else:
                t1 = time.perf_counter()
                plan = MethodPlans(sig, method, params, block_size=spec.block_size).for_layout(layout)
                density = plan_density(plan)
                extra = {"plan_build_s": time.perf_counter() - t1}
                out, times, heads, peak, ms, used = timed_sparse(lambda: sparsevdit.apply(
                    model, method=method, block_size=spec.block_size, backend=settings.backend, **params))
            rows.append({**base, "row": label, "plan": {"method": method, "params": params},
                         "target_density": None, "density": density, "backend": used, "backend_heads": heads, "ms": ms,
                         "ms_all": times, "speedup": dense_ms / ms, "rel_diff_vs_dense": _rel_diff(out, dense_out),
                         "peak_mem_gib": peak, **extra, **({"profile": profiles[-1]} if settings.profile else {})})
            sel = (f"  selection {extra['selection_ms']:.1f} ms ({extra['selection_share']:.1%})"
                   if "selection_ms" in extra else "")
            log(f"  {label:12s} density {density:6.1%}  {ms:10.1f} ms  {dense_ms / ms:5.2f}x  backend {used}{sel}")
            del out

        for r in rows:
            if r["model"] == name:
                r["sdpa"] = sdpa
        sdpa = model_sdpa
        model_info.append({"model": name, "description": spec.description, "config": spec.config,
                           "latents": list(spec.latents), "encoder_hidden_states": list(spec.text),
                           "layout": layout.to_dict(), "tokens": layout.num_tokens, "parameters": params,
                           "signature": sig.to_dict(), "dtype": str(dtype).replace("torch.", ""),
                           "build_s": build_s})
        del model, inputs, dense_out, forward
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if on_model is not None:
            on_model(_result(settings, device, dtype, sdpa, targets, model_info, rows))

    return _result(settings, device, dtype, sdpa, targets, model_info, rows)


def _result(settings, device, dtype, sdpa, targets, model_info, rows) -> dict:
    return {
        **environment(),
        "benchmark": "e2e",
        "what": "one forward of a diffusers video transformer (transformer only, random weights, "
                + ("blocks compiled outside self-attention), " if settings.compile else "eager), ")
                + 
                "dense (torch SDPA) vs sparsevdit.apply(plan or method); median of timed forwards",
        "device": str(device),
        "settings": {"models": list(settings.models), "densities": targets, "backend": settings.backend,
                     "warmup": settings.warmup, "rep": settings.rep, "sdpa": sdpa, "dense_plan": settings.dense_plan,
                     "compile": settings.compile, "dtype": str(dtype).replace("torch.", ""),
                     "methods": [{"method": m, "params": p} for m, p in settings.methods]},
        "models": model_info,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    head = ("model", "row", "density", "backend", "ms", "speedup", "selection ms (share)", "rel diff vs dense")
    lines = [[r["model"], r["row"], f"{r['density']:.1%}", r["backend"], f"{r['ms']:.1f}", f"{r['speedup']:.2f}x",
              f"{r['selection_ms']:.2f} ({r['selection_share']:.1%})" if "selection_ms" in r else "-",
              f"{r['rel_diff_vs_dense']:.2e}"] for r in result["rows"]]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i < 2 or i == 3 else "{:>%d}" % w for i, w in enumerate(widths))
    out = [f"end-to-end: one transformer forward, {result['settings']['dtype']} on {result['gpu']}",
           fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None


def _method_spec(text: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:{json params}``, checked against the method registry."""
    import json

    from ..methods import MethodError, parse_params

    name, sep, raw = text.partition(":")
    try:
        params = json.loads(raw) if sep else {}
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the parameters after ':' are not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: the parameters after ':' must be a JSON object")
    try:
        parse_params(name, params)
    except (MethodError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, params


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="wan1.3b,wan14b",
                   help="comma list of wan1.3b, wan14b, hunyuan720p, cogvideox1.5 (default: the two Wan models; "
                        "about 5 minutes on an H100), or tiny, tiny-hunyuan, tiny-cogvideox on a CPU")
    p.add_argument("--method", action="append", default=[], metavar="NAME[:JSON]", type=_method_spec,
                   help="also time a training-free method on every head (repeatable), e.g. radial or "
                        "'sliding_tile:{\"window\": [3, 3, 3]}' (`sparsevdit methods` lists them)")
    p.add_argument("--densities", type=_floats, default=[0.1, 0.2, 0.3],
                   help="comma list of target attention densities in (0, 1) (default 0.1,0.2,0.3)")
    p.add_argument("--backend", default="auto",
                   help="sparsevdit attention backend for the plans: auto (triton on Hopper), triton, flex (default auto)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per row before timing, at least 1 (default 2)")
    p.add_argument("--rep", type=int, default=5, help="timed forwards per row; the median is reported (default 5)")
    p.add_argument("--sdpa", choices=SDPA_CHOICES, default=None,
                   help="PyTorch SDPA kernel for every row (dense self-attention, and cross-attention everywhere) "
                        "(default: cudnn on CUDA, PyTorch's choice on CPU)")
    p.add_argument("--no-dense-plan", action="store_true", help="skip the all-dense plan sanity row")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block outside its self-attention, the same for every row (default: eager)")
    p.add_argument("--profile", action="store_true",
                   help="after timing each row, profile one forward and store its top kernels by device time")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random Wan config instead of --models (CPU smoke test; times mean nothing)")
    p.add_argument("--out", default=None,
                   help="result JSON (default out/bench/e2e-<gpu>.json, e2e-tiny-<device>.json with --tiny; "
                        "the repository's results: pass bench/results/...)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    ap = parser(prog)
    args = ap.parse_args(argv)
    models = ["tiny"] if args.tiny else [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if args.warmup < 0 or args.rep < 1:
        ap.error("--warmup must be >= 0 and --rep >= 1")
    bad = [d for d in args.densities if not 0 < d < 1]
    if bad:
        ap.error(f"--densities must lie in (0, 1), got {bad}")
    if args.backend not in ("auto", "triton", "flex", "reference", "masked_sdpa", "sdpa"):
        ap.error(f"--backend {args.backend!r}: choose auto, triton or flex")
    try:
        device = _resolve_device(args.device)
    except RuntimeError as exc:
        ap.error(str(exc))
    if any(MODELS[m].full_size for m in models) and device.type != "cuda":
        ap.error("the full-size models need a CUDA GPU; use --tiny (or the tiny-* models) for a CPU smoke run")
    settings = Settings(models=models, densities=args.densities, backend=args.backend, warmup=args.warmup,
                        rep=args.rep, device=str(device), sdpa=args.sdpa, dense_plan=not args.no_dense_plan,
                        compile=args.compile, profile=args.profile, methods=args.method)
    slug = gpu_slug() if device.type == "cuda" else "cpu"
    # never a tracked result by default: the repository's files are written by passing --out
    out = args.out or (f"out/bench/e2e-tiny-{slug}.json" if args.tiny else f"out/bench/e2e-{slug}.json")
    result = run(settings, on_model=lambda partial: write_json(out, partial))
    print(format_table(result))
    if args.profile:
        for r in result["rows"]:
            print(f"\n{r['model']} {r['row']}: top kernels (ms per forward)")
            for p in r.get("profile", [])[:15]:
                print(f"  {p['ms']:9.2f}  x{p['calls']:<5d} {p['name']}")
    path = write_json(out, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
