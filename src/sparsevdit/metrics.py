"""Image and video quality metrics: PSNR and SSIM (Wang et al. 2004).

Inputs are torch tensors or numpy arrays, by default in ``[-1, 1]`` (``data_range=2``).
SSIM follows the reference implementation: an 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, population (not sample) statistics, and only the positions where the
window lies fully inside the image ("valid" filtering).  It equals scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=...)`` on each 2-D plane.  Everything is computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "video_psnr_ssim"]

_WIN = 11
_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03


def _as_tensor(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.detach().to(torch.float64)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(a), _as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("empty input")
    return a, b.to(a.device)


def psnr(a, b, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements; ``inf`` when ``a`` equals ``b``."""
    a, b = _pair(a, b)
    mse = float(torch.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(device) -> torch.Tensor:
    x = torch.arange(_WIN, dtype=torch.float64, device=device) - (_WIN - 1) / 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    return g / g.sum()


def _ssim_planes(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM of each plane: a, b [N, H, W] -> [N]."""
    g = _gaussian_window(a.device)
    gh = g.view(1, 1, 1, _WIN)
    gv = g.view(1, 1, _WIN, 1)

    def filt(x: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(x, gh), gv)

    x = a.unsqueeze(1)
    y = b.unsqueeze(1)
    # one batched filtering of the five moments
    m = filt(torch.cat([x, y, x * x, y * y, x * y], dim=0))
    n = x.shape[0]
    mx, my, mxx, myy, mxy = m[:n], m[n : 2 * n], m[2 * n : 3 * n], m[3 * n : 4 * n], m[4 * n :]
    vx = mxx - mx * mx
    vy = myy - my * my
    cxy = mxy - mx * my
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.flatten(1).mean(dim=1)


def ssim(a, b, data_range: float = 2.0) -> float:
    """Mean SSIM over channels and frames.

    Shapes: [H, W], [C, H, W], [C, T, H, W] or [B, C, T, H, W] (any leading dims): SSIM is
    computed per channel on each frame (each 2-D plane) and averaged.  H and W must be at
    least 11.  1.0 for identical inputs; symmetric in ``a`` and ``b``.
    """
    a, b = _pair(a, b)
    if a.dim() < 2:
        raise ValueError(f"need at least 2 dims [..., H, W], got {tuple(a.shape)}")
    H, W = a.shape[-2:]
    if H < _WIN or W < _WIN:
        raise ValueError(f"SSIM needs H, W >= {_WIN}, got {H}x{W}")
    a = a.reshape(-1, H, W)
    b = b.reshape(-1, H, W)
    vals = []
    chunk = 256  # planes per batch, to bound memory on long videos
    for i in range(0, a.shape[0], chunk):
        vals.append(_ssim_planes(a[i : i + chunk], b[i : i + chunk], data_range))
    return float(torch.cat(vals).mean())


def video_psnr_ssim(a, b, data_range: float = 2.0) -> dict:
    """``{"psnr": dB, "ssim": mean SSIM}`` of two videos (or images) of the same shape."""
    return {"psnr": psnr(a, b, data_range), "ssim": ssim(a, b, data_range)}
