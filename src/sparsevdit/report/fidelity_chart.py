"""A fidelity study's chart: PSNR (and SSIM on a second panel) against attention density or relative
time, one colour and marker per method, from the rows of a fidelity study JSON (``sparsevdit fidelity``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._figures import pyplot, save_png

# The time measured end to end (a GPU study) is preferred to the cost model's prediction.
TIME_KEYS = (
    ("relative_time_measured", "relative time, measured (sparse / dense wall time)"),
    ("relative_time_flops", "relative time, predicted (FLOP cost model)"),
)
X_CHOICES = ("density", "time")
STYLE = {"budget": ("tab:red", "o"), "budget+sens": ("tab:purple", "P"), "sparse-vdit": ("tab:blue", "s"),
         "uniform-diag": ("tab:gray", "^"), "uniform-multi": ("tab:olive", "v"), "svg": ("tab:green", "D")}
SPARE = [(c, m) for m in ("X", "*", "h", "<", ">") for c in ("tab:orange", "tab:brown", "tab:pink", "tab:cyan")]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def x_axis(rows: Sequence[Mapping], x: str) -> tuple[str, str]:
    """(row key, axis label) for ``x`` ("density" or "time"); time is measured where any row has it."""
    if x == "density":
        return "density", "attention density (share of query-key pairs computed)"
    if x == "time":
        for key, label in TIME_KEYS:
            if any(_number(r.get(key)) is not None for r in rows):
                return key, label
        raise ValueError(f"no row has a relative time ({' or '.join(k for k, _ in TIME_KEYS)})")
    raise ValueError(f"x must be one of {', '.join(X_CHOICES)}, got {x!r}")


def _rows(rows: Any) -> list[Mapping]:
    if isinstance(rows, Mapping):  # the whole study file
        rows = rows.get("rows")
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("rows must be a list of row objects (a fidelity study's 'rows'), or the study itself")
    return list(rows)


def save_fidelity_png(rows: Sequence[Mapping] | Mapping, path: str | Path, x: str = "density",
                      title: str | None = None) -> Path:
    """PSNR (left) and SSIM (right, when the rows have it) against ``x`` ("density" or "time").
    Rows without a finite PSNR / x value (identical videos have PSNR inf) are left out of that panel."""
    rows = _rows(rows)
    key, label = x_axis(rows, x)
    metrics = [m for m in ("psnr", "ssim") if any(_number(r.get(m)) is not None and _number(r.get(key)) is not None
                                                  for r in rows)]
    if "psnr" not in metrics:
        raise ValueError(f"no row has both a finite psnr and a finite {key}: nothing to draw")
    methods = list(dict.fromkeys(str(r.get("method", "?")) for r in rows))
    spare = iter(SPARE * (1 + len(methods) // len(SPARE)))
    style = {m: STYLE.get(m) or next(spare) for m in methods}

    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.3), dpi=110, squeeze=False,
                             layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for method in methods:
            pts = sorted((_number(r.get(key)), _number(r.get(metric))) for r in rows
                         if str(r.get("method", "?")) == method
                         and _number(r.get(key)) is not None and _number(r.get(metric)) is not None)
            if pts:
                colour, marker = style[method]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, label=method,
                        linestyle=":", linewidth=0.8, alpha=0.9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("PSNR vs dense (dB)" if metric == "psnr" else "SSIM vs dense", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or f"fidelity vs {'attention density' if x == 'density' else 'relative time'}", fontsize=10)
    return save_png(fig, path)
