"""The compute dtype a run picks by default: bfloat16 on CUDA, and on a CPU that multiplies it faster.

Many x86 CPUs (AVX512-BF16, AMX) run bfloat16 matrix products 2-3x faster than float32; others emulate
it and run slower. PyTorch has no public query for the instruction, so we time one small product of
each once per process (a few milliseconds) instead of guessing from the CPU's name.
"""

from __future__ import annotations

import functools
import time

import torch

# bfloat16 must beat float32 by this much to be chosen: its rounding is not free.
MIN_SPEEDUP = 1.5


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_speedup() -> float:
    """float32 time / bfloat16 time of a [1024 x 384] x [384 x 1536] product on this CPU (median of 5)."""
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 384).to(dtype)
        b = torch.randn(384, 1536).to(dtype)
        a @ b  # first call: kernel selection, page faults
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            runs.append(time.perf_counter() - start)
        times[dtype] = sorted(runs)[2]
    return times[torch.float32] / max(times[torch.bfloat16], 1e-9)


def default_dtype(device: str) -> str:
    """``"bfloat16"`` on CUDA, or on a CPU where it measures ``MIN_SPEEDUP`` x faster; else ``"float32"``."""
    if str(device).startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if cpu_bfloat16_speedup() >= MIN_SPEEDUP else "float32"
