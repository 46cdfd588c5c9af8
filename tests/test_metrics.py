"""Tests of PSNR / SSIM (sparsevdit.metrics) against known values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsevdit.metrics import psnr, ssim, video_psnr_ssim


def _pattern():
    """A smooth 3-channel 48x48 image in [-0.8, 0.8] and a deterministic wobble."""
    i = torch.arange(48, dtype=torch.float64)
    y, x = torch.meshgrid(i / 48, i / 48, indexing="ij")
    img = torch.stack([0.8 * torch.sin(6 * x + c) * torch.cos(4 * y) for c in range(3)])
    ii, jj = torch.meshgrid(i, i, indexing="ij")
    wob = torch.stack([0.15 * torch.sin(12.9898 * ii + 78.233 * jj + 5.0 * c) for c in range(3)])
    return img, wob


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1


# ----------------------------------------------------------------------------- PSNR


def test_psnr_known_offset():
    a = _rand(3, 4, 16, 16) * 0.5
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)  # 26.0206 dB
    assert psnr(a, a + 0.1) == pytest.approx(26.0206, abs=1e-4)
    assert psnr(a, a - 0.2, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-9)
    # known MSE from a half-and-half error
    b = a.clone()
    b.view(-1)[: a.numel() // 2] += 0.2  # MSE = 0.02
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / 0.02), abs=1e-9)


def test_psnr_identical_symmetric_and_types():
    a = _rand(3, 8, 8)
    assert psnr(a, a) == math.inf
    b = _rand(3, 8, 8, seed=1)
    assert psnr(a, b) == pytest.approx(psnr(b, a))
    assert psnr(a.numpy(), b.numpy()) == pytest.approx(psnr(a, b))
    assert psnr(a.float(), b.float()) == pytest.approx(psnr(a, b), abs=1e-4)
    with pytest.raises(ValueError):
        psnr(a, b[:2])


# ----------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 4, 20, 24), (2, 3, 2, 16, 16), (12, 12)])
def test_ssim_identical_is_one(shape):
    a = _rand(*shape)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_analytic():
    # flat planes: SSIM = luminance term (2 mx my + C1) / (mx^2 + my^2 + C1)
    c1 = (0.01 * 2.0) ** 2
    a = torch.full((3, 16, 16), 0.5, dtype=torch.float64)
    b = torch.zeros_like(a)
    assert ssim(a, b) == pytest.approx(c1 / (0.25 + c1), rel=1e-9)
    b2 = torch.full_like(a, -0.25)
    assert ssim(a, b2) == pytest.approx((2 * 0.5 * -0.25 + c1) / (0.25 + 0.0625 + c1), rel=1e-9)


def test_ssim_known_values():
    # reference values computed once with skimage.metrics.structural_similarity(
    #   a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
    #   use_sample_covariance=False, data_range=2.0), scikit-image 0.26
    img, wob = _pattern()
    assert ssim(img, -img) == pytest.approx(0.48361248113854316, abs=1e-9)
    assert ssim(img, img + 0.3) == pytest.approx(0.35750650582201055, abs=1e-9)
    assert ssim(img, (img + wob).clamp(-1, 1)) == pytest.approx(0.6030187862878783, abs=1e-9)
    assert ssim(img, img * 0.5) == pytest.approx(0.706531257152892, abs=1e-9)


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")

    def ref(a, b):
        return skm.structural_similarity(
            a, b, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0
        )

    img, wob = _pattern()
    for other in (-img, img + 0.3, (img + wob).clamp(-1, 1), img * 0.5):
        assert ssim(img, other) == pytest.approx(ref(img.numpy(), other.numpy()), abs=1e-9)
    a = _rand(3, 5, 24, 20, seed=2)
    b = (a + 0.3 * _rand(3, 5, 24, 20, seed=3)).clamp(-1, 1)
    per_frame = [ref(a[:, t].numpy(), b[:, t].numpy()) for t in range(a.shape[1])]
    assert ssim(a, b) == pytest.approx(float(np.mean(per_frame)), abs=1e-9)
    # batched video: the same value as its clips averaged (equal sizes)
    batch_a = torch.stack([a, a.flip(-1)])
    batch_b = torch.stack([b, b.flip(-1)])
    assert ssim(batch_a, batch_b) == pytest.approx(float(np.mean(per_frame)), abs=1e-9)


def test_ssim_symmetric_range_and_monotone():
    a = _rand(3, 2, 32, 32, seed=4)
    prev = 1.0
    for k, sigma in enumerate((0.05, 0.2, 0.5, 1.0)):
        b = (a + sigma * _rand(3, 2, 32, 32, seed=10 + k)).clamp(-1, 1)
        s = ssim(a, b)
        assert s == pytest.approx(ssim(b, a), abs=1e-12)
        assert -1.0 <= s < prev
        prev = s
    assert -1.0 <= ssim(a, -a) <= 1.0
    assert ssim(a.float().numpy(), a.float().numpy()) == pytest.approx(1.0)


def test_ssim_rejects_small_or_mismatched():
    with pytest.raises(ValueError):
        ssim(_rand(3, 10, 10), _rand(3, 10, 10))
    with pytest.raises(ValueError):
        ssim(_rand(3, 16, 16), _rand(3, 16, 17))


def test_video_psnr_ssim():
    a = _rand(3, 4, 16, 16)
    b = a + 0.1
    out = video_psnr_ssim(a, b)
    assert set(out) == {"psnr", "ssim"}
    assert out["psnr"] == pytest.approx(26.0206, abs=1e-4)
    assert out["ssim"] == pytest.approx(ssim(a, b))
    same = video_psnr_ssim(a, a)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
