"""Procedural video clips for training and checking a small video diffusion transformer.

Every clip belongs to one of the scene classes in :data:`CLASSES` (captions from
:func:`caption_for`).  A clip is fixed by its seed: all random parameters are drawn on the
CPU with a ``torch.Generator`` seeded from it (:func:`clip_spec`), and the clip is then
rendered with vectorised tensor operations on the requested device, so the same seed gives
the same clip on any device (up to float rounding of the device's maths library).

Geometry is defined in normalised coordinates: ``y`` runs from -1 (top) to 1 (bottom) over
the frame height, ``x`` over ``[-W/H, W/H]``, and time ``t`` runs from 0 to 1 over the clip.
Motion is therefore smooth and the same at any frame count or resolution (16 or 32 frames,
32x32 or 96x96 pixels).  Edges are anti-aliased with a smoothstep of the signed distance
over about one pixel.

Rendering works on a batch: clips of one class are drawn together, all their parameters
being tensors over the batch.  Values are float32 in ``[-1, 1]`` with layout
``[3, T, H, W]`` per clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = [
    "CLASSES",
    "N_PARAMS",
    "ClipSpec",
    "caption_for",
    "clip_spec",
    "make_batch",
    "make_clip",
    "render_specs",
    "save_frames_png",
]

CLASSES: list[str] = [
    "translate",
    "rotate",
    "scale",
    "occlude",
    "pan",
    "zoom",
    "lighting",
    "bounce",
    "orbit",
]

_CAPTIONS: dict[str, str] = {
    "translate": "a textured shape sliding across the frame",
    "rotate": "a textured shape spinning in place",
    "scale": "a textured shape growing and shrinking",
    "occlude": "two shapes crossing, one passing in front of the other",
    "pan": "a camera panning over a patterned surface",
    "zoom": "a camera zooming over a dotted surface",
    "lighting": "a still scene as the light brightens or dims",
    "bounce": "a ball bouncing on the floor",
    "orbit": "a shape circling around the centre",
}

#: Number of uniform random numbers drawn per clip (every class reads its own subset).
N_PARAMS = 48

_TWO_PI = 2.0 * math.pi


def caption_for(cls: int) -> str:
    """Short caption of scene class ``cls``."""
    return _CAPTIONS[CLASSES[_check_cls(cls)]]


def _check_cls(cls: int) -> int:
    c = int(cls)
    if not 0 <= c < len(CLASSES):
        raise ValueError(f"class index {cls} out of range 0..{len(CLASSES) - 1}")
    return c


@dataclass(frozen=True)
class ClipSpec:
    """Everything that fixes a clip: class, caption, seed and its random parameters."""

    cls: int
    caption: str
    seed: int
    params: tuple[float, ...] = ()  # N_PARAMS uniforms in [0, 1), drawn from the seed


def _mix_seed(seed: int) -> int:
    """splitmix64 of the seed, so nearby or huge seeds give unrelated generator states."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def clip_spec(seed: int, cls: int | None = None) -> ClipSpec:
    """Draw the clip's parameters from ``seed`` (on the CPU); ``cls`` overrides the class.

    The class is always drawn first, so the other parameters of a seed do not depend on
    whether ``cls`` is given.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(_mix_seed(seed))
    drawn = int(torch.randint(len(CLASSES), (1,), generator=g).item())
    u = torch.rand(N_PARAMS, generator=g, dtype=torch.float64)
    c = drawn if cls is None else _check_cls(cls)
    return ClipSpec(cls=c, caption=caption_for(c), seed=int(seed), params=tuple(u.tolist()))


# --------------------------------------------------------------------------------------
# rendering helpers (all on the target device, vectorised over batch, time and pixels)
# --------------------------------------------------------------------------------------


class _Ctx:
    """Sampling grid of one render: time [1,T,1,1], x [1,1,1,W], y [1,1,H,1]."""

    def __init__(self, frames: int, height: int, width: int, device: torch.device):
        if frames < 1 or height < 1 or width < 1:
            raise ValueError("frames, height and width must be positive")
        self.T, self.H, self.W = frames, height, width
        self.device = device
        f32 = torch.float32
        if frames > 1:
            t = torch.arange(frames, device=device, dtype=f32) / (frames - 1)
        else:
            t = torch.zeros(1, device=device, dtype=f32)
        self.t = t.view(1, frames, 1, 1)
        self.aspect = width / height
        ys = (torch.arange(height, device=device, dtype=f32) + 0.5) / height * 2.0 - 1.0
        xs = ((torch.arange(width, device=device, dtype=f32) + 0.5) / width * 2.0 - 1.0) * self.aspect
        self.Y = ys.view(1, 1, height, 1)
        self.X = xs.view(1, 1, 1, width)
        self.pix = 2.0 / height  # one pixel in normalised units (square pixels)


def _u(P: torch.Tensor, i: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Parameter ``i`` mapped to [lo, hi), shaped [b, 1, 1, 1] for broadcasting."""
    return (lo + (hi - lo) * P[:, i]).view(-1, 1, 1, 1)


def _pick(P: torch.Tensor, i: int, n: int) -> torch.Tensor:
    """Parameter ``i`` as a choice among ``n``, shaped [b, 1, 1, 1] (int64)."""
    return (P[:, i] * n).floor().clamp(0, n - 1).long().view(-1, 1, 1, 1)


def _sign(P: torch.Tensor, i: int) -> torch.Tensor:
    return torch.where(P[:, i] < 0.5, -1.0, 1.0).view(-1, 1, 1, 1).to(P.dtype)


def _smoothstep(e0, e1, x: torch.Tensor) -> torch.Tensor:
    s = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _cover(sd: torch.Tensor, pix) -> torch.Tensor:
    """Anti-aliased coverage of the region sd < 0 (edge softened over ~1.5 pixel)."""
    return _smoothstep(0.75 * pix, -0.75 * pix, sd)


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV (each [b,1,1,1], hue in turns) to RGB [b, 3, 1, 1, 1]."""
    h = torch.remainder(h, 1.0)
    chans = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h * 6.0, 6.0)
        chans.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(chans, dim=1)  # [b,3,1,1,1]


def _over(img: torch.Tensor, col: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Composite ``col`` ([b,3,T|1,H|1,W|1]) with coverage ``alpha`` [b,T,H,W] over ``img``."""
    return img + (col - img) * alpha.unsqueeze(1)


def _background(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    """Dark, desaturated vertical gradient (params 24..29), [b, 3, 1, H, 1]."""
    h = _u(P, 24)
    top = _hsv(h, _u(P, 25, 0.1, 0.5), _u(P, 26, 0.12, 0.38))
    bot = _hsv(h + _u(P, 27, -0.15, 0.15), _u(P, 28, 0.1, 0.5), _u(P, 29, 0.08, 0.3))
    w = ((ctx.Y + 1.0) * 0.5).unsqueeze(1)  # [1,1,1,H,1]
    return top + (bot - top) * w


def _sdf(shape: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance to a disc (0), square (1) or triangle (2) of size ``r`` at the origin."""
    disc = torch.hypot(qx, qy) - r
    a = 0.82 * r
    dx = qx.abs() - a
    dy = qy.abs() - a
    box = torch.hypot(dx.clamp(min=0.0), dy.clamp(min=0.0)) + torch.maximum(dx, dy).clamp(max=0.0)
    # equilateral triangle (Inigo Quilez's sdEquilateralTriangle), half side h
    h = 1.25 * r
    k = math.sqrt(3.0)
    px = qx.abs() - h
    py = -qy + h / k
    flip = (px + k * py) > 0
    px, py = torch.where(flip, 0.5 * (px - k * py), px), torch.where(flip, 0.5 * (-k * px - py), py)
    px = px - torch.minimum(torch.maximum(px, -2.0 * h), torch.zeros_like(px))
    tri = -torch.hypot(px, py) * torch.sign(py)
    return torch.where(shape == 0, disc, torch.where(shape == 1, box, tri))


class _Obj:
    """A textured shape whose look is read from 12 parameters starting at ``off``.

    off+0 shape, +1 texture (stripes/checker), +2 texture frequency, +3 texture angle,
    +4..+6 colour (h, s, v), +7..+9 second colour, +10 size (read by the class), +11 angle.
    """

    def __init__(self, P: torch.Tensor, off: int, r0: torch.Tensor, hue: torch.Tensor | None = None):
        self.shape = _pick(P, off + 0, 3)
        self.tex = _pick(P, off + 1, 2)
        self.freq = _u(P, off + 2, 1.6, 3.0)  # cycles across the object's diameter
        self.tang = _u(P, off + 3, 0.0, math.pi)
        h = _u(P, off + 4) if hue is None else hue
        s = _u(P, off + 5, 0.55, 1.0)
        v = _u(P, off + 6, 0.72, 1.0)
        self.c1 = _hsv(h, s, v)
        self.c2 = _hsv(h + _u(P, off + 7, 0.1, 0.5), _u(P, off + 8, 0.3, 1.0), v * _u(P, off + 9, 0.25, 0.55))
        self.angle0 = _u(P, off + 11, 0.0, _TWO_PI)
        self.r0 = r0

    def render(self, ctx: _Ctx, cx, cy, angle=None, scale=None):
        """Colour [b,3,T,H,W] and coverage [b,T,H,W] at centre (cx, cy), angle, scale (each
        broadcastable to [b,T,1,1])."""
        if angle is None:
            angle = self.angle0
        if scale is None:
            scale = torch.ones_like(self.r0)
        dx = ctx.X - cx
        dy = ctx.Y - cy
        ca, sa = torch.cos(angle), torch.sin(angle)
        inv = 1.0 / scale
        qx = (ca * dx + sa * dy) * inv
        qy = (ca * dy - sa * dx) * inv
        alpha = _cover(_sdf(self.shape, qx, qy, self.r0) * scale, ctx.pix)
        # texture in the object's own frame, so it moves, turns and scales with it
        f = self.freq / (2.0 * self.r0)
        ct, st = torch.cos(self.tang), torch.sin(self.tang)
        su = torch.sin(_TWO_PI * f * (ct * qx + st * qy))
        sv = torch.sin(_TWO_PI * f * (ct * qy - st * qx))
        w = (_TWO_PI * f * ctx.pix * inv * 0.75).clamp(0.05, 1.0)
        mu = _smoothstep(-w, w, su)
        mv = _smoothstep(-w, w, sv)
        checker = 0.5 + 0.5 * (2.0 * mu - 1.0) * (2.0 * mv - 1.0)
        m = torch.where(self.tex == 0, mu, checker)
        col = self.c2 + (self.c1 - self.c2) * m.unsqueeze(1)
        return col, alpha


def _along(t: torch.Tensor, c: torch.Tensor, length: torch.Tensor, angle: torch.Tensor):
    """Point moving linearly through ``c`` over ``length`` in direction ``angle``."""
    s = length * (t - 0.5)
    return s * torch.cos(angle), s * torch.sin(angle)


# --------------------------------------------------------------------------------------
# scene classes: each maps parameters P [b, N_PARAMS] to a video [b, 3, T, H, W] in [0, 1]
# --------------------------------------------------------------------------------------


def _scene_translate(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    ob = _Obj(P, 0, _u(P, 10, 0.2, 0.3))
    cx = _u(P, 30, -0.15, 0.15) * ctx.aspect
    cy = _u(P, 31, -0.15, 0.15)
    ox, oy = _along(ctx.t, 0.0, _u(P, 32, 0.7, 1.15), _u(P, 33, 0.0, _TWO_PI))
    col, alpha = ob.render(ctx, cx + ox, cy + oy)
    return _over(_background(P, ctx), col, alpha)


def _scene_rotate(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    ob = _Obj(P, 0, _u(P, 10, 0.3, 0.42))
    cx = _u(P, 30, -0.2, 0.2) * ctx.aspect
    cy = _u(P, 31, -0.2, 0.2)
    turn = _u(P, 32, 0.6 * math.pi, 1.6 * math.pi) * _sign(P, 33)
    col, alpha = ob.render(ctx, cx, cy, angle=ob.angle0 + turn * ctx.t)
    return _over(_background(P, ctx), col, alpha)


def _scene_scale(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    ob = _Obj(P, 0, _u(P, 10, 0.22, 0.32))
    cx = _u(P, 30, -0.2, 0.2) * ctx.aspect
    cy = _u(P, 31, -0.2, 0.2)
    # either a steady grow/shrink or a pulse (grow then shrink, or the reverse)
    steady = _u(P, 32, 0.9, 1.4) * _sign(P, 33) * (ctx.t - 0.5)
    pulse = _u(P, 32, 0.35, 0.6) * torch.sin(_TWO_PI * _u(P, 35, 0.6, 1.2) * ctx.t + _u(P, 36, 0.0, _TWO_PI))
    log_s = torch.where(P[:, 34].view(-1, 1, 1, 1) < 0.6, steady, pulse)
    col, alpha = ob.render(ctx, cx, cy, scale=torch.exp(log_s))
    return _over(_background(P, ctx), col, alpha)


def _scene_occlude(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    a = _Obj(P, 0, _u(P, 10, 0.2, 0.29))
    b = _Obj(P, 12, _u(P, 22, 0.2, 0.29), hue=_u(P, 4) + _u(P, 16, 0.25, 0.75))
    axis = _u(P, 30, 0.0, _TWO_PI)
    ca, sa = torch.cos(axis), torch.sin(axis)
    cx = _u(P, 37, -0.1, 0.1) * ctx.aspect
    cy = _u(P, 38, -0.1, 0.1)
    # positions along the axis (s) and across it (n); A and B go opposite ways
    na = _u(P, 31, -0.12, 0.12)
    nb = na + _u(P, 32, -0.14, 0.14)
    sa_t = _u(P, 33, 0.9, 1.3) * (ctx.t - 0.5) + _u(P, 35, -0.1, 0.1)
    sb_t = -_u(P, 34, 0.9, 1.3) * (ctx.t - 0.5) + _u(P, 36, -0.1, 0.1)
    col_a, al_a = a.render(ctx, cx + sa_t * ca - na * sa, cy + sa_t * sa + na * ca)
    col_b, al_b = b.render(ctx, cx + sb_t * ca - nb * sa, cy + sb_t * sa + nb * ca)
    b_front = (P[:, 39] < 0.5).view(-1, 1, 1, 1)
    back_col = torch.where(b_front.unsqueeze(1), col_a, col_b)
    back_al = torch.where(b_front, al_a, al_b)
    front_col = torch.where(b_front.unsqueeze(1), col_b, col_a)
    front_al = torch.where(b_front, al_b, al_a)
    img = _over(_background(P, ctx), back_col, back_al)
    return _over(img, front_col, front_al)


def _plaid(P: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Two crossing soft sinusoidal bands plus a fine ripple, at world coords (params 32..47)."""
    a1 = _u(P, 32, 0.0, _TWO_PI)
    a2 = a1 + _u(P, 34, math.pi / 4, 3 * math.pi / 4)
    a3 = _u(P, 39, 0.0, _TWO_PI)
    f1 = _u(P, 33, 0.7, 1.8)
    f2 = _u(P, 35, 0.7, 1.8)
    f3 = _u(P, 38, 2.0, 3.0)
    s1 = torch.sin(_TWO_PI * (f1 * (torch.cos(a1) * wx + torch.sin(a1) * wy) + _u(P, 36)))
    s2 = torch.sin(_TWO_PI * (f2 * (torch.cos(a2) * wx + torch.sin(a2) * wy) + _u(P, 37)))
    s3 = torch.sin(_TWO_PI * (f3 * (torch.cos(a3) * wx + torch.sin(a3) * wy)))
    h = _u(P, 40)
    ca = _hsv(h, _u(P, 41, 0.45, 0.9), _u(P, 42, 0.75, 1.0))
    cb = _hsv(h + _u(P, 43, 0.25, 0.5), _u(P, 44, 0.4, 0.9), _u(P, 45, 0.15, 0.35))
    cc = _hsv(h + _u(P, 46, 0.55, 0.8), _u(P, 47, 0.5, 1.0), 0.9)
    m1 = _smoothstep(-0.7, 0.7, s1).unsqueeze(1)
    m2 = _smoothstep(-0.5, 0.9, s2).unsqueeze(1)
    col = cb + (ca - cb) * m1
    col = col + (cc - col) * (0.55 * m2)
    return col * (0.88 + 0.12 * s3).unsqueeze(1)


def _scene_pan(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    ox, oy = _along(ctx.t, 0.0, _u(P, 30, 0.6, 1.2), _u(P, 31, 0.0, _TWO_PI))
    return _plaid(P, ctx.X + ox, ctx.Y + oy)


def _scene_zoom(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    z = torch.exp(_u(P, 30, 0.6, 1.0) * _sign(P, 31) * (ctx.t - 0.5))  # magnification
    rot = _u(P, 32, 0.0, _TWO_PI)
    cr, sr = torch.cos(rot), torch.sin(rot)
    # world coordinates (lattice frame) of each pixel; the screen centre stays at (c0, c1)
    px = ctx.X / z
    py = ctx.Y / z
    wx = _u(P, 33, -0.5, 0.5) + cr * px + sr * py
    wy = _u(P, 34, -0.5, 0.5) + cr * py - sr * px
    spacing = _u(P, 35, 0.32, 0.5)
    fx = wx / spacing
    fy = wy / spacing
    fx = fx - torch.round(fx)
    fy = fy - torch.round(fy)
    d = torch.hypot(fx, fy) * spacing - spacing * _u(P, 36, 0.18, 0.32)
    dots = _cover(d, ctx.pix / z)
    h = _u(P, 40)
    c_dot = _hsv(h, _u(P, 41, 0.5, 1.0), _u(P, 42, 0.8, 1.0))
    c_b1 = _hsv(h + _u(P, 43, 0.3, 0.7), _u(P, 44, 0.3, 0.8), _u(P, 45, 0.15, 0.3))
    c_b2 = _hsv(h + _u(P, 46, 0.3, 0.7), _u(P, 47, 0.3, 0.8), 0.45)
    g = 0.5 + 0.5 * torch.sin(_TWO_PI * (_u(P, 37, 0.3, 0.6) * wx + _u(P, 38, -0.3, 0.3) * wy) + _u(P, 39, 0.0, _TWO_PI))
    bg = c_b1 + (c_b2 - c_b1) * g.unsqueeze(1)
    return _over(bg, c_dot, dots)


def _scene_lighting(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    a = _Obj(P, 0, _u(P, 10, 0.2, 0.3))
    b = _Obj(P, 12, _u(P, 22, 0.2, 0.3), hue=_u(P, 4) + _u(P, 16, 0.25, 0.75))
    col_a, al_a = a.render(ctx, _u(P, 30, -0.55, -0.15) * ctx.aspect, _u(P, 31, -0.4, 0.4))
    col_b, al_b = b.render(ctx, _u(P, 32, 0.15, 0.55) * ctx.aspect, _u(P, 33, -0.4, 0.4))
    img = _over(_over(_background(P, ctx), col_a, al_a), col_b, al_b)
    lo = _u(P, 34, 0.3, 0.55)
    hi = _u(P, 35, 0.95, 1.25)
    up = P[:, 36].view(-1, 1, 1, 1) < 0.5
    b0 = torch.where(up, lo, hi)
    b1 = torch.where(up, hi, lo)
    t0 = _u(P, 37, 0.0, 0.3)
    t1 = _u(P, 38, 0.7, 1.0)
    e = _smoothstep(t0, t1, ctx.t)  # [b,T,1,1]
    tint0 = torch.stack([_u(P, 39 + i, 0.8, 1.2) for i in range(3)], dim=1)  # [b,3,1,1,1]
    tint1 = torch.stack([_u(P, 42 + i, 0.8, 1.2) for i in range(3)], dim=1)
    e5 = e.unsqueeze(1)
    gain = (b0 + (b1 - b0) * e).unsqueeze(1) * (tint0 + (tint1 - tint0) * e5)
    return img * gain


def _scene_bounce(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    img = _background(P, ctx)
    yf = _u(P, 30, 0.2, 0.45)  # where the floor meets the back wall
    yc = yf + (0.95 - yf) * _u(P, 37, 0.3, 0.6)  # the line on the floor where the ball lands
    grey = _u(P, 31, 0.4, 0.62)
    tint = torch.cat([_u(P, 40 + i, 0.92, 1.08) for i in range(3)], dim=1).unsqueeze(2)  # [b,3,1,1,1]
    depth = ((ctx.Y - yf) / (1.0 - yf + 1e-3)).clamp(0.0, 1.0).unsqueeze(1)  # 0 at the wall, 1 at the bottom
    floor_col = grey.unsqueeze(1) * tint * (0.7 + 0.4 * depth)
    floor_al = _cover(yf - ctx.Y, ctx.pix)  # [b,1,H,1]
    img = _over(img, floor_col, floor_al)
    ball = _Obj(P, 0, _u(P, 10, 0.14, 0.21))
    r = ball.r0
    hmax = torch.minimum(_u(P, 32, 0.55, 1.05), yc - 2.0 * r + 0.92)
    n_b = _u(P, 33, 1.2, 2.6)  # bounces per clip
    ph = torch.remainder(n_b * ctx.t + _u(P, 34), 1.0)
    height = hmax * 4.0 * ph * (1.0 - ph)  # parabolic flight, elastic bounce at ph = 0
    x = _u(P, 35, -0.3, 0.3) * ctx.aspect + _u(P, 36, -0.6, 0.6) * (ctx.t - 0.5)
    y = yc - r - height
    # soft shadow on the floor, smaller and fainter as the ball rises
    lift = height / 1.1
    rx = r * (1.15 - 0.5 * lift)
    rho = torch.hypot((ctx.X - x) / rx, (ctx.Y - yc) / (0.3 * rx))
    shadow = (1.0 - _smoothstep(0.55, 1.0, rho)) * (0.55 * (1.0 - 0.7 * lift))
    img = img * (1.0 - shadow.unsqueeze(1))
    # shaded ball: plain colour, lit from the top left
    dx = ctx.X - x
    dy = ctx.Y - y
    alpha = _cover(torch.hypot(dx, dy) - r, ctx.pix)
    light = (1.0 - torch.hypot(dx + 0.4 * r, dy + 0.4 * r) / (1.6 * r)).clamp(0.0, 1.0)
    col = ball.c1 * (0.45 + 0.7 * light.unsqueeze(1))
    return _over(img, col, alpha)


def _scene_orbit(P: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    ob = _Obj(P, 0, _u(P, 10, 0.17, 0.25))
    cx = _u(P, 30, -0.12, 0.12) * ctx.aspect
    cy = _u(P, 31, -0.12, 0.12)
    rad = _u(P, 32, 0.38, 0.56)
    theta = _u(P, 33, 0.0, _TWO_PI) + _u(P, 34, 0.8 * math.pi, 1.7 * math.pi) * _sign(P, 35) * ctx.t
    spin = _u(P, 36, -math.pi, math.pi) * ctx.t
    col, alpha = ob.render(ctx, cx + rad * torch.cos(theta), cy + rad * torch.sin(theta), angle=ob.angle0 + spin)
    return _over(_background(P, ctx), col, alpha)


_SCENES: dict[str, Callable[[torch.Tensor, _Ctx], torch.Tensor]] = {
    "translate": _scene_translate,
    "rotate": _scene_rotate,
    "scale": _scene_scale,
    "occlude": _scene_occlude,
    "pan": _scene_pan,
    "zoom": _scene_zoom,
    "lighting": _scene_lighting,
    "bounce": _scene_bounce,
    "orbit": _scene_orbit,
}
assert list(_SCENES) == CLASSES


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def render_specs(
    specs: Sequence[ClipSpec], frames: int = 16, height: int = 64, width: int = 64, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render clips: video [B, 3, T, H, W] float32 in [-1, 1] and classes [B] int64."""
    device = torch.device(device)
    ctx = _Ctx(frames, height, width, device)
    B = len(specs)
    cls = torch.tensor([s.cls for s in specs], dtype=torch.int64)
    out = torch.empty(B, 3, frames, height, width, device=device, dtype=torch.float32)
    if B == 0:
        return out, cls.to(device)
    P = torch.tensor([s.params for s in specs], dtype=torch.float64).to(torch.float32).to(device)
    for c in sorted(set(cls.tolist())):
        idx = (cls == c).nonzero().flatten()
        vid = _SCENES[CLASSES[c]](P[idx.to(device)], ctx)
        vid = vid.expand(len(idx), 3, frames, height, width)
        if len(idx) == B:
            out.copy_(vid)
        else:
            out[idx.to(device)] = vid
    out.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
    return out, cls.to(device)


def make_batch(
    seeds: Sequence[int] | torch.Tensor,
    frames: int = 16,
    height: int = 64,
    width: int = 64,
    classes: Sequence[int | None] | torch.Tensor | int | None = None,
    device="cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips for ``seeds``: video [B, 3, T, H, W] float32 in [-1, 1] and classes [B] int64.

    ``classes``: None (each class drawn from its seed), one class for all, or one per seed
    (None entries drawn from the seed).  Equal to stacking :func:`make_clip` of each seed.
    """
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.flatten().tolist()
    seeds = [int(s) for s in seeds]
    if classes is None or isinstance(classes, int):
        cls_list: list[int | None] = [classes] * len(seeds)
    else:
        if isinstance(classes, torch.Tensor):
            classes = classes.flatten().tolist()
        cls_list = list(classes)
        if len(cls_list) != len(seeds):
            raise ValueError(f"{len(cls_list)} classes for {len(seeds)} seeds")
    specs = [clip_spec(s, c) for s, c in zip(seeds, cls_list)]
    return render_specs(specs, frames, height, width, device)


def make_clip(
    seed: int, frames: int = 16, height: int = 64, width: int = 64, cls: int | None = None, device="cpu"
) -> tuple[torch.Tensor, int]:
    """One clip: video [3, frames, height, width] float32 in [-1, 1] and its class index."""
    spec = clip_spec(seed, cls)
    video, _ = render_specs([spec], frames, height, width, device)
    return video[0], spec.cls


def save_frames_png(video: torch.Tensor, path: str | Path, scale: int = 1, gap: int = 2) -> Path:
    """Write a frame grid: frames of a clip in a row, one row per clip.

    ``video``: [3, T, H, W] or [B, 3, T, H, W] in [-1, 1].  ``scale`` enlarges pixels
    (nearest neighbour); ``gap`` pixels of white separate the frames.
    """
    import numpy as np
    from PIL import Image

    v = video.detach().float().cpu()
    if v.dim() == 4:
        v = v.unsqueeze(0)
    if v.dim() != 5 or v.shape[1] != 3:
        raise ValueError(f"expected [3,T,H,W] or [B,3,T,H,W], got {tuple(video.shape)}")
    B, _, T, H, W = v.shape
    img = ((v.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()  # B,T,H,W,3
    if scale > 1:
        img = img.repeat(scale, axis=2).repeat(scale, axis=3)
        H, W = H * scale, W * scale
    grid = np.full((B * (H + gap) + gap, T * (W + gap) + gap, 3), 255, dtype=np.uint8)
    for b in range(B):
        for t in range(T):
            y0 = gap + b * (H + gap)
            x0 = gap + t * (W + gap)
            grid[y0 : y0 + H, x0 : x0 + W] = img[b, t]
    from ..atomic_files import saving

    path = Path(path)
    with saving(path, suffix=".tmp" + path.suffix) as tmp:  # the format follows the name's suffix
        Image.fromarray(grid).save(tmp)
    return path
