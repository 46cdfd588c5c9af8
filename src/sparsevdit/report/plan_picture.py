"""Pictures of a SparsityPlan: a layers x heads grid per denoising step, coloured by pattern family,
each cell showing that head's attention density in percent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..patterns import BlockPattern
from ..plan import SparsityPlan
from ._figures import pyplot, save_png

DENSE = "dense"
SKIP = "skip"
FAMILY_COLOURS = {
    DENSE: "#c7c7c7",
    SKIP: "#303030",
    "diagonal": "#4c78a8",
    "multi_diagonal": "#f58518",
    "vertical_stripe": "#54a24b",
    "random_blocks": "#b279a2",
}
OTHER_COLOURS = ("#e45756", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6", "#8cd17d", "#79706e", "#d37295")


def family(pattern: BlockPattern | None) -> str:
    """The legend name of a head's pattern: its pattern name, a union's parts joined by '+', 'dense' for None."""
    if pattern is None:
        return DENSE
    if pattern.name == "union" and isinstance(pattern.params.get("patterns"), (list, tuple)):
        parts = [p if isinstance(p, str) else str(p.get("name")) for p in pattern.params["patterns"]]
        return "+".join(parts)
    return pattern.name


def plan_steps(plan: SparsityPlan) -> int | None:
    """The number of denoising steps the plan was made for (its calibration metadata), or None if unknown."""
    calibration = plan.metadata.get("calibration")
    steps = calibration.get("steps") if isinstance(calibration, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def check_step(plan: SparsityPlan, step: Any) -> int:
    """``step`` if the plan says something about it, else ValueError."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    total = plan_steps(plan)
    if total is not None and step >= total:
        raise ValueError(f"step {step} is beyond the plan: it was made for {total} steps (0..{total - 1})")
    ends = [e.step_end for e in plan.entries]
    if total is None and ends and None not in ends and step >= max(ends):
        raise ValueError(f"step {step} is beyond the plan: its last step range ends at step {max(ends)}")
    return step


def _assignment(plan: SparsityPlan, step: int) -> list:
    return [None if (e := plan.entry_for(layer, step)) is None else e.heads for layer in range(plan.model.num_layers)]


def plan_step_ranges(plan: SparsityPlan) -> list[tuple[int, int | None]]:
    """The plan's distinct step ranges [start, end) (end None: to the end), consecutive ranges with the
    same patterns in every layer merged. Bounded by the plan's known number of steps where it has one."""
    total = plan_steps(plan)
    bounds = {0} | {e.step_start for e in plan.entries} | {e.step_end for e in plan.entries if e.step_end is not None}
    if total is not None:
        bounds = {b for b in bounds if b < total} | {total}
    ordered = sorted(bounds)
    ranges: list[tuple[int, int | None]] = list(zip(ordered, ordered[1:]))
    open_ended = not plan.entries or any(e.step_end is None for e in plan.entries)
    if total is None and open_ended:
        ranges.append((ordered[-1], None))
    merged: list[tuple[int, int | None]] = []
    for start, end in ranges:
        if merged and _assignment(plan, merged[-1][0]) == _assignment(plan, start):
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _cells(plan: SparsityPlan, step: int) -> list[list[tuple[str, float]]]:
    """(family, density) of every head of every layer at ``step``."""
    rows = []
    for layer in range(plan.model.num_layers):
        pats = plan.patterns_for(layer, step)
        if pats is None:
            rows.append([(DENSE, 1.0)] * plan.model.num_heads)
        else:
            rows.append([(family(p), p.density) for p in pats])
    return rows


def _colours(families: list[str]) -> dict[str, str]:
    colours, spare = {}, iter(OTHER_COLOURS * (1 + len(families) // len(OTHER_COLOURS)))
    for name in families:
        colours[name] = FAMILY_COLOURS.get(name) or next(spare)
    return colours


def _percent(density: float) -> str:
    value = 100 * density
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _draw(ax: Any, cells: list[list[tuple[str, float]]], colours: dict[str, str], heading: str) -> None:
    from matplotlib.colors import ListedColormap, to_rgb

    names = list(colours)
    index = [[names.index(fam) for fam, _ in row] for row in cells]
    ax.imshow(index, cmap=ListedColormap([colours[n] for n in names]), vmin=-0.5, vmax=len(names) - 0.5,
              interpolation="nearest", aspect="auto")
    layers, heads = len(cells), len(cells[0])
    size = max(4.0, min(8.0, 90 / max(heads, layers)))
    for y, row in enumerate(cells):
        for x, (fam, density) in enumerate(row):
            r, g, b = to_rgb(colours[fam])
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"
            ax.text(x, y, _percent(density), ha="center", va="center", fontsize=size, color=ink)
    every = lambda n: range(0, n, max(1, math.ceil(n / 24)))  # noqa: E731  at most ~24 tick labels a side
    ax.set_xticks(list(every(heads)))
    ax.set_yticks(list(every(layers)))
    ax.tick_params(labelsize=7, length=0)
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    mean = sum(d for row in cells for _, d in row) / (layers * heads)
    ax.set_title(f"{heading} (mean density {mean:.1%})", fontsize=9)


def _figure(plan: SparsityPlan, panels: list[tuple[str, int]], title: str | None, columns: int) -> Any:
    from matplotlib.patches import Patch

    plt = pyplot()
    all_cells = [_cells(plan, step) for _, step in panels]
    families = sorted({fam for cells in all_cells for row in cells for fam, _ in row},
                      key=lambda f: (f != DENSE, f != SKIP, f))
    colours = _colours(families)
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    w = max(4.5, 0.42 * plan.model.num_heads + 1.3)
    h = max(2.2, 0.3 * plan.model.num_layers + 1.0)
    legend_h = 0.3 * math.ceil(len(families) / 2) + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows + legend_h), dpi=110, squeeze=False,
                             layout="constrained")
    for ax, (heading, _), cells in zip(axes.flat, panels, all_cells):
        _draw(ax, cells, colours, heading)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Patch(facecolor=colours[f], edgecolor="#666666", label=f) for f in families]
    ncol = max(1, min(len(handles), int(w * cols / 2.2)))  # about 2.2 inches per legend entry
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title or f"{plan.model.class_name} plan: pattern per head, cell = density %", fontsize=10)
    return fig


def save_plan_png(plan: SparsityPlan, path: str | Path, step: int = 0, title: str | None = None) -> Path:
    """The plan at denoising ``step``: rows = layers, columns = heads, colour = pattern family, text = density %."""
    step = check_step(plan, step)
    return save_png(_figure(plan, [(f"step {step}", step)], title, 1), path)


def save_plan_steps_png(plan: SparsityPlan, path: str | Path, title: str | None = None, columns: int = 4) -> Path:
    """One panel (as in ``save_plan_png``) per distinct step range of the plan (``plan_step_ranges``)."""
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    total = plan_steps(plan)
    panels = []
    for start, end in plan_step_ranges(plan):
        last = end - 1 if end is not None else None
        heading = f"step {start}" if last == start else f"steps {start}-{'end' if last is None else last}"
        panels.append((heading + (f" of {total}" if total else ""), start))
    return save_png(_figure(plan, panels, title, columns), path)
