"""A frame grid of dense samples, one row per scene class: what the model card shows."""

from __future__ import annotations

import argparse

import torch

from .data import CLASSES, save_frames_png
from .vdit import SamplerConfig, sample
from .weights import load_weights


def sample_grid(weights, out_png, *, frames=16, size=64, steps=30, guidance=3.0, device="auto", every=2, seed_base=0):
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_weights(weights, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    classes = torch.arange(len(CLASSES), device=device)
    video = sample(model, classes, frames=frames, height=size, width=size,
                   seeds=[seed_base + i for i in range(len(CLASSES))], sampler=SamplerConfig(steps=steps, guidance=guidance))
    return save_frames_png(video[:, :, ::every].cpu(), out_png)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weights", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed-base", type=int, default=0)
    a = p.parse_args(argv)
    print(sample_grid(a.weights, a.out, frames=a.frames, size=a.size, steps=a.steps, seed_base=a.seed_base))


if __name__ == "__main__":
    main()
