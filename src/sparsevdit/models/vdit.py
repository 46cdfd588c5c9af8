"""A small video DiT in the style of Wan2.1, whose self-attention runs through ``sparse_attention``.

Pixel-space (no VAE): a clip [B, 3, T, H, W] in [-1, 1] is cut into 1 x p x p patches (frame-major
tokens), processed by transformer blocks with 3-D RoPE, adaLN-zero timestep modulation, QK-RMSNorm
self-attention and cross-attention to a few learned tokens of the scene class, and mapped back to a
velocity field. Trained with rectified flow: x_t = (1 - t) x_0 + t * noise, target noise - x_0.

Self-attention patterns are set per block (``block.attn.patterns``: one BlockPattern per head, or
None for dense), so every pattern, plan and backend of the library applies to this model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import sparse_attention
from ..layout import TokenLayout


@dataclass(frozen=True)
class VDiTConfig:
    dim: int = 384
    depth: int = 8
    heads: int = 6
    patch: int = 4  # spatial patch size; temporal patch is 1
    in_channels: int = 3
    num_classes: int = 8
    context_tokens: int = 4
    # The condition's tokens also join self-attention as a text prefix (as in CogVideoX / HunyuanVideo):
    # they give the model global tokens (stripe heads) and the library's text paths a real model.
    text_in_attention: bool = False
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    # training clip size, pixels; sampling may use other sizes
    frames: int = 16
    height: int = 64
    width: int = 64

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    def layout(self, frames: int | None = None, height: int | None = None, width: int | None = None) -> TokenLayout:
        """Token layout of a clip of the given pixel size (default: the training size)."""
        # ``is None``, not ``or``: a 0 given by a caller is an error, never the training size
        f = self.frames if frames is None else frames
        h = self.height if height is None else height
        w = self.width if width is None else width
        if h < self.patch or w < self.patch or h % self.patch or w % self.patch:
            raise ValueError(f"height and width must be positive multiples of the patch size {self.patch}, got {h}x{w}")
        if self.text_in_attention:
            return TokenLayout(f, h // self.patch, w // self.patch, text_tokens=self.context_tokens, text_position="prefix")
        return TokenLayout(f, h // self.patch, w // self.patch)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_3d(layout: TokenLayout, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim/2] for rotary embedding over (frame, row, column); frame gets the rest.

    Text tokens get no rotation (cos 1, sin 0), at their place in the sequence.
    """
    half = head_dim // 2
    hw = 2 * (half // 6)  # pairs for rows and columns each
    parts = {"t": half - 2 * hw, "y": hw, "x": hw}
    t, y, x = torch.meshgrid(
        torch.arange(layout.frames, device=device),
        torch.arange(layout.height, device=device),
        torch.arange(layout.width, device=device),
        indexing="ij",
    )
    angles = []
    for pos, n in ((t, parts["t"]), (y, parts["y"]), (x, parts["x"])):
        freqs = theta ** (-torch.arange(n, device=device, dtype=torch.float32) / n)
        angles.append(pos.reshape(-1, 1).float() * freqs[None])
    ang = torch.cat(angles, -1)
    if layout.num_text:
        text = torch.zeros(layout.num_text, ang.shape[1], device=device)
        ang = torch.cat([text, ang] if layout.text_position == "prefix" else [ang, text])
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, D] with pairs (2i, 2i+1) rotated."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    return out.to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim // heads)
        self.norm_k = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.patterns = None  # None: dense; else one BlockPattern per head (see sparsevdit.apply)
        self.backend = "auto"
        self.damping = None  # a kernels.damping.LogitDamping (UltraViCo) for the sparse path, or None
        self.selector = None  # a dynamic method: callable(q, k, layout, v=v) -> patterns or None (dense)
        self.capture = None  # optional callable(q, k, v) for profiling; sees post-RoPE [B, H, N, D]

    def forward(self, x, rope, layout: TokenLayout):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.norm_q(q), *rope), apply_rope(self.norm_k(k), *rope)
        if self.capture is not None:
            self.capture(q, k, v)
        o = self.attend(q, k, v, layout)
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))

    def attend(self, q, k, v, layout: TokenLayout) -> torch.Tensor:
        """The attention itself, dense or sparse: the part ``compile_outside_attention`` leaves eager."""
        patterns = self.patterns
        if self.selector is not None:  # a dynamic method's masks, from this call's q and k
            patterns = self.selector(q, k, layout, v=v) or patterns
        if patterns is None:
            return F.scaled_dot_product_attention(q, k, v)
        return sparse_attention(q, k, v, patterns, layout=layout, backend=self.backend, damping=self.damping)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, cfg: VDiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d, cfg.heads)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross = CrossAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.modulation = nn.Linear(d, 6 * d)  # adaLN-zero: zero-initialised in VideoDiT.reset_parameters

    def forward(self, x, temb, context, rope, layout):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(temb)[:, None].chunk(6, -1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, rope, layout)
        x = x + self.cross(self.norm_cross(x), context)
        x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        return x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to 0..1000 like diffusion timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([args.cos(), args.sin()], -1)


class VideoDiT(nn.Module):
    def __init__(self, cfg: VDiTConfig = VDiTConfig()):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch
        self.patch_embed = nn.Conv3d(cfg.in_channels, d, kernel_size=(1, p, p), stride=(1, p, p))
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.time_act = nn.SiLU()
        # Class index num_classes is the "no condition" token for classifier-free guidance.
        self.class_context = nn.Embedding(cfg.num_classes + 1, cfg.context_tokens * d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mod_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, p * p * cfg.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.class_context.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.modulation.weight)
            nn.init.zeros_(blk.modulation.bias)
        for m in (self.mod_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Velocity for clips x [B, 3, T, H, W] at flow times t [B] given class indices [B]."""
        b, _, frames, height, width = x.shape
        layout = self.cfg.layout(frames, height, width)
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, d], frame-major
        temb = self.time_act(self.time_mlp(timestep_embedding(t, 256).to(h.dtype)))
        context = self.class_context(classes).view(b, self.cfg.context_tokens, -1)
        rope = rope_3d(layout, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        if layout.num_text:  # the condition's tokens start the sequence and are dropped at the end
            h = torch.cat([context.to(h.dtype), h], 1)
        for blk in self.blocks:
            h = blk(h, temb, context, rope, layout)
        h = h[:, layout.num_text:]
        shift, scale = self.mod_out(temb)[:, None].chunk(2, -1)
        h = self.out(self.norm_out(h) * (1 + scale) + shift)
        p = self.cfg.patch
        h = h.view(b, frames, height // p, width // p, self.cfg.in_channels, p, p)
        return h.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, self.cfg.in_channels, frames, height, width)

    # attention control ---------------------------------------------------------------------------
    def attention_modules(self) -> list[SelfAttention]:
        return [blk.attn for blk in self.blocks]

    def set_patterns(self, per_layer, backend: str = "auto") -> None:
        """per_layer: list (one per block) of None or a list of BlockPattern per head."""
        for attn, pats in zip(self.attention_modules(), per_layer):
            attn.patterns, attn.backend = pats, backend

    def clear_patterns(self) -> None:
        for attn in self.attention_modules():
            attn.patterns = None
            attn.damping = None
            attn.selector = None

    def compile_outside_attention(self) -> None:
        """``torch.compile`` every block, its attention call excepted: dense and sparse runs then share the
        same compiled code around an eager attention, so their times differ by attention alone."""
        for blk in self.blocks:
            blk.attn.attend = torch.compiler.disable(blk.attn.attend)
            blk.compile(dynamic=False)


def flow_matching_loss(model: VideoDiT, x0: torch.Tensor, classes: torch.Tensor, *, t=None, noise=None, cfg_dropout: float = 0.0, generator=None):
    """Rectified-flow loss; t from a logit-normal distribution (more weight mid-trajectory) unless given."""
    b = x0.shape[0]
    if t is None:
        t = torch.sigmoid(torch.randn(b, device=x0.device, generator=generator))
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    if cfg_dropout > 0:
        drop = torch.rand(b, device=x0.device, generator=generator) < cfg_dropout
        classes = torch.where(drop, torch.full_like(classes, model.null_class), classes)
    tt = t.view(b, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    pred = model(xt, t, classes)
    return F.mse_loss(pred.float(), (noise - x0).float())


@dataclass
class SamplerConfig:
    steps: int = 20
    guidance: float = 3.0
    shift: float = 2.0  # timestep shift (as in SD3 / Wan): more steps at high noise

    def timesteps(self) -> torch.Tensor:
        t = torch.linspace(1.0, 0.0, self.steps + 1)
        return self.shift * t / (1 + (self.shift - 1) * t)


@torch.no_grad()
def sample(
    model: VideoDiT,
    classes: torch.Tensor,
    *,
    frames: int,
    height: int,
    width: int,
    seeds: list[int],
    sampler: SamplerConfig = SamplerConfig(),
    on_step=None,
    progress=None,
) -> torch.Tensor:
    """Euler sampling with classifier-free guidance; the same seed gives the same starting noise.

    ``on_step(step)`` is called before each denoising step (plans with step ranges use it).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    noise = torch.stack([
        torch.randn(model.cfg.in_channels, frames, height, width, generator=torch.Generator().manual_seed(int(s)))
        for s in seeds
    ]).to(device)
    x = noise.to(dtype)
    ts = sampler.timesteps().tolist()
    b = x.shape[0]
    null = torch.full_like(classes, model.null_class)
    for i in range(sampler.steps):
        if on_step is not None:
            on_step(i)
        t, t_next = ts[i], ts[i + 1]
        tt = torch.full((b,), t, device=device)
        if sampler.guidance == 1.0:
            v = model(x, tt, classes)
        else:
            v_both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([classes, null]))
            v_cond, v_unc = v_both.chunk(2)
            v = v_unc + sampler.guidance * (v_cond - v_unc)
        x = x + (t_next - t) * v
        if progress is not None:
            progress()
    return x.float().clamp(-1, 1)
