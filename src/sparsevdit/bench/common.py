"""Shared pieces of the GPU benchmarks: environment facts, timing, result files."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

import torch

from .. import atomic_files


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def gpu_slug() -> str:
    """'h100' for 'NVIDIA H100 80GB HBM3', used in result file names."""
    name = gpu_name().lower()
    for tag in ("h200", "h100", "a100", "l40s", "l4", "b200", "rtx"):
        if tag in name:
            return tag
    return name.replace(" ", "-")


def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def median_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median time of ``fn`` in ms after warm-up, timed with CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Atomic write: a crash mid-way leaves any previous results file intact (and no temp file). Strict
    JSON: a NaN or infinite timing is written as null, so the run's other rows are kept."""
    return atomic_files.write_json(path, atomic_files.non_finite_as_null(data))
