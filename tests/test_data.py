"""Tests of the procedural video generator (sparsevdit.models.data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsevdit.models.data import (
    CLASSES,
    N_PARAMS,
    ClipSpec,
    caption_for,
    clip_spec,
    make_batch,
    make_clip,
    save_frames_png,
)


def test_classes_and_captions():
    assert len(CLASSES) >= 8
    assert len(set(CLASSES)) == len(CLASSES)
    caps = [caption_for(c) for c in range(len(CLASSES))]
    assert all(isinstance(c, str) and c.strip() for c in caps)
    assert len(set(caps)) == len(caps)
    with pytest.raises(ValueError):
        caption_for(len(CLASSES))
    with pytest.raises(ValueError):
        caption_for(-1)


def test_clip_spec_deterministic_and_override():
    s1, s2 = clip_spec(123), clip_spec(123)
    assert s1 == s2
    assert isinstance(s1, ClipSpec)
    assert len(s1.params) == N_PARAMS and all(0.0 <= p < 1.0 for p in s1.params)
    assert s1.caption == caption_for(s1.cls) and s1.seed == 123
    other = (s1.cls + 1) % len(CLASSES)
    s3 = clip_spec(123, other)
    assert s3.cls == other and s3.caption == caption_for(other)
    assert s3.params == s1.params  # the class override leaves the other parameters alone
    assert clip_spec(124).params != s1.params
    # seeds are mixed, so huge seeds work and differ from small ones
    assert clip_spec(2**40 + 123).params != s1.params


def test_classes_drawn_from_seeds_cover_all():
    drawn = {clip_spec(s).cls for s in range(200)}
    assert drawn == set(range(len(CLASSES)))


def test_make_clip_deterministic():
    v1, c1 = make_clip(7)
    v2, c2 = make_clip(7)
    assert c1 == c2
    assert torch.equal(v1, v2)
    v3, _ = make_clip(8, cls=c1)
    assert not torch.equal(v1, v3)


@pytest.mark.parametrize("size", [(16, 64, 64), (8, 32, 32), (24, 96, 96), (8, 32, 48), (1, 16, 16)])
def test_shapes_and_range(size):
    T, H, W = size
    seeds = list(range(len(CLASSES)))
    video, cls = make_batch(seeds, T, H, W, classes=seeds)
    assert video.shape == (len(seeds), 3, T, H, W)
    assert video.dtype == torch.float32
    assert cls.dtype == torch.int64 and cls.tolist() == seeds
    assert torch.isfinite(video).all()
    assert video.min() >= -1.0 and video.max() <= 1.0
    clip, c = make_clip(3, T, H, W)
    assert clip.shape == (3, T, H, W) and isinstance(c, int)


def test_make_batch_equals_stacked_make_clip():
    seeds = list(range(100, 124))
    video, cls = make_batch(seeds)
    clips = [make_clip(s) for s in seeds]
    stacked = torch.stack([v for v, _ in clips])
    assert cls.tolist() == [c for _, c in clips]
    torch.testing.assert_close(video, stacked, rtol=0, atol=1e-6)
    # explicit classes, tensor seeds, one class for all
    fixed = [i % len(CLASSES) for i in range(len(seeds))]
    v2, c2 = make_batch(torch.tensor(seeds), classes=fixed)
    assert c2.tolist() == fixed
    torch.testing.assert_close(v2, torch.stack([make_clip(s, cls=k)[0] for s, k in zip(seeds, fixed)]), rtol=0, atol=1e-6)
    v3, c3 = make_batch(seeds[:3], 4, 32, 32, classes=2)
    assert c3.tolist() == [2, 2, 2]
    torch.testing.assert_close(v3[1], make_clip(seeds[1], 4, 32, 32, cls=2)[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        make_batch([1, 2], classes=[0])
    empty, ec = make_batch([])
    assert empty.shape == (0, 3, 16, 64, 64) and ec.shape == (0,)


@pytest.mark.parametrize("cls", range(len(CLASSES)))
def test_every_class_renders_with_motion(cls):
    video, _ = make_batch(range(6), 16, 32, 32, classes=cls)
    diffs = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 3, 4))  # [B, T-1]
    # every clip changes over time, in most frame steps
    assert (diffs.mean(dim=1) > 2e-3).all(), diffs.mean(dim=1)
    # (the light ramps may start late and end early, objects move in every step)
    min_moving = 0.3 if CLASSES[cls] == "lighting" else 0.6
    assert ((diffs > 1e-4).float().mean(dim=1) > min_moving).all()
    # and has visible content (not a flat frame)
    assert (video.flatten(1).std(dim=1) > 0.05).all()
    if CLASSES[cls] == "lighting":
        mean = video.mean(dim=(1, 3, 4))  # [B, T]
        assert ((mean[:, -1] - mean[:, 0]).abs() > 0.1).all()


def test_motion_continuous_in_time_and_space():
    seeds = list(range(len(CLASSES)))
    # same motion at any frame count: frame k of 5 is frame 4k of 17
    a, _ = make_batch(seeds, 5, 32, 32, classes=seeds)
    b, _ = make_batch(seeds, 17, 32, 32, classes=seeds)
    torch.testing.assert_close(a, b[:, :, ::4], rtol=0, atol=1e-5)
    # finer time sampling gives smaller steps between frames
    step_a = (a[:, :, 1:] - a[:, :, :-1]).abs().mean()
    step_b = (b[:, :, 1:] - b[:, :, :-1]).abs().mean()
    assert step_b < 0.6 * step_a
    # same scene at any resolution: 2x2-pooled 64x64 is close to 32x32
    hi, _ = make_batch(seeds, 3, 64, 64, classes=seeds)
    lo, _ = make_batch(seeds, 3, 32, 32, classes=seeds)
    err = (F.avg_pool3d(hi, (1, 2, 2)) - lo).abs().mean(dim=(1, 2, 3, 4))
    assert (err < 0.03).all(), err


def test_save_frames_png(tmp_path):
    from PIL import Image

    video, _ = make_batch([1, 2], 4, 16, 16)
    p = save_frames_png(video, tmp_path / "sub" / "grid.png", scale=2, gap=1)
    img = Image.open(p)
    assert img.size == (4 * (32 + 1) + 1, 2 * (32 + 1) + 1)
    p2 = save_frames_png(video[0], tmp_path / "one.png")
    assert Image.open(p2).size == (4 * (16 + 2) + 2, 16 + 4)
    with pytest.raises(ValueError):
        save_frames_png(video[0, 0], tmp_path / "bad.png")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    seeds = list(range(len(CLASSES)))
    cpu, ccls = make_batch(seeds, 8, 32, 32, classes=seeds)
    gpu, gcls = make_batch(seeds, 8, 32, 32, classes=seeds, device="cuda")
    assert gpu.device.type == "cuda" and gcls.tolist() == ccls.tolist()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=2e-3)
