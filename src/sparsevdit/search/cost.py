"""Cost model: predicted attention kernel time of a head's pattern, relative to dense attention.

Every time here is *relative*: 1.0 is one head of the model's dense attention through PyTorch's fused
SDPA (cuDNN / FlashAttention on a GPU). A layer whose heads are all dense runs exactly that (the
``sdpa`` backend takes it), so it costs 1.0 per head; a layer with any sparse head runs its
frame-major heads in one block-sparse launch and its position-major heads in another, and each head
costs what the table says for its pattern family at its density. Its dense heads get a launch of their
own (``sparse_attention(backend="auto")``) on the faster of fused SDPA and our dense kernel, so in
``layer_time`` they cost the smaller of 1.0 and ``head_time("dense")`` (the search's per-head price:
our kernel's dense time, 0.92 in the H200 table, where the Gluon kernel beats cuDNN). ``skip`` heads
cost 0.

Three sources of the table (``CostModel.kind``):

``measured``
    Rows of ``bench/results/kernels-<gpu>.json`` (``python bench/kernels.py``): kernel ms / cuDNN dense
    ms per pattern kind and density, at the benchmark shape nearest the model's token count; triton
    rows where present, else flex. Interpolated linearly in density; below the lowest measured density
    time is taken proportional to density. Families without their own rows borrow: vertical_stripe
    -> random, multi+stripes -> diag+stripes (the same kernel over the same number of blocks). The
    token permutation of position-major patterns is not in these rows (it is one gather and one
    scatter of Q/K/V/O per layer, a few percent at most).
``calibrated``
    The same table timed on the current GPU for the model's own shape (``bench.kernels.calibrate_cost_model``,
    ``sparsevdit cost --calibrate``). GPU only; written against the benchmark code of
    ``bench/kernels.py`` and NOT yet run on a GPU in this repository (no GPU was available when it was
    written): treat its first results with care.
A pattern of another name (a method's mask) is priced as the measured family whose block lists look
like its own (``structural_family``: contiguous runs of key blocks per query block).
``flops``
    No GPU: time proportional to the work. A head at density ``d`` costs ``(1 + block_overhead) * d``:
    ``d`` for its share of dense FLOPs plus a fixed cost per kept block (index loads, softmax
    bookkeeping, partial tiles) as a fraction of one block's FLOPs, 0.1 by default (block-sparse
    kernels run their kept blocks at about 0.9 of dense SDPA's rate in our H100 measurements).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from ..layout import TokenLayout
from ..patterns import BlockPattern

FAMILIES = ("dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "diag+stripes", "multi+stripes", "random")
# Package data (a copy of bench/results/kernels-h200.json), so an installed wheel finds it outside the checkout.
DEFAULT_KERNEL_TABLE = Path(__file__).resolve().parent.parent / "data" / "kernels-h200.json"
_BORROW = {"vertical_stripe": "random", "multi+stripes": "diag+stripes", "random_blocks": "random"}


def family_of(name: str, params: dict | None = None) -> str:
    """The cost family of a pattern recipe (``name`` and ``params`` as in a plan's head entry)."""
    if name in ("dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe"):
        return name
    if name == "random_blocks":
        return "random"
    if name == "union":
        parts = {(p if isinstance(p, str) else p.get("name")) for p in (params or {}).get("patterns", [])}
        parts -= {"skip"}
        if "dense" in parts:
            return "dense"
        if "multi_diagonal" in parts:
            return "multi+stripes"
        if "diagonal" in parts:
            return "diag+stripes"
        if parts == {"vertical_stripe"}:
            return "vertical_stripe"
    return "random"


def pattern_family(pattern: BlockPattern) -> str:
    """The cost family of a built pattern: by its recipe for our own patterns, by the shape of its
    block lists for anything else (a method's mask: radial, sliding_tile, a third party's)."""
    if pattern.is_empty:
        return "skip"
    if pattern.is_dense:
        return "dense"
    if pattern.name in RECIPE_FAMILIES:
        return family_of(pattern.name, pattern.params)
    return structural_family(pattern)


# Pattern names ``family_of`` knows; every other pattern is priced by ``structural_family``.
RECIPE_FAMILIES = ("dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "union", "random_blocks")


def structural_family(pattern: BlockPattern) -> str:
    """The measured family whose block lists look like this pattern's: what the kernels' speed depends
    on is how many contiguous runs of key blocks a query block reads (one run: a band; a few: bands a
    frame apart; many: scattered blocks), not who made the mask."""
    counts = pattern.kv_counts.long()
    idx = pattern.kv_indices.long()
    width = idx.shape[1]
    if width == 0 or int(counts.sum()) == 0:
        return "skip"
    listed = torch.arange(width)[None, :] < counts[:, None]
    breaks = ((idx[:, 1:] != idx[:, :-1] + 1) & listed[:, 1:]).sum(1)  # a new run starts
    rows = counts > 0
    runs = float((breaks[rows] + 1).float().mean())
    kept = float(counts[rows].float().mean())
    if runs <= 2.5:  # one band (and a text block beside it)
        return "diagonal"
    if runs <= kept / 2:  # runs of two blocks or more on average
        return "multi_diagonal"
    return "random"


@dataclass
class CostModel:
    """Relative kernel time per (pattern family, density); see the module docstring."""

    kind: str
    table: dict = field(default_factory=dict)  # family -> sorted [(density, relative time)], density in (0, 1]
    source: str = ""
    block_overhead: float = 0.1  # flops kind only

    # queries -------------------------------------------------------------------------------------
    def head_time(self, family: str, density: float) -> float:
        """Relative time of one head of ``family`` at ``density`` inside a block-sparse launch."""
        if family == "skip" or density <= 0:
            return 0.0
        if self.kind == "flops":
            return (1.0 + self.block_overhead) * min(1.0, density)
        points = self.table.get(family) or self.table.get(_BORROW.get(family, "random")) or self.table.get("random")
        if family == "dense":
            points = self.table.get("dense") or points
        if not points:
            raise KeyError(f"cost table ({self.source}) has no rows for {family!r} nor a family to borrow from")
        return _interp(points, density)

    def pattern_time(self, pattern: BlockPattern) -> float:
        return self.head_time(pattern_family(pattern), pattern.density)

    def layer_time(self, patterns: Iterable[BlockPattern] | None) -> float:
        """Mean relative time per head of one layer (at most 1.0 for a dense layer: fused SDPA)."""
        if patterns is None:
            return 1.0
        patterns = list(patterns)
        # dense heads run in their own launch on the faster of fused SDPA (1.0) and our dense kernel
        # (sparse_attention's "auto")
        dense = min(1.0, self.head_time("dense", 1.0))
        return sum(dense if p.is_dense else self.pattern_time(p) for p in patterns) / len(patterns)

    def plan_time(self, plan, steps: int) -> dict:
        """Predicted attention time of ``plan`` over ``steps`` denoising steps, relative to dense."""
        layers = plan.model.num_layers
        total = dens = 0.0
        for step in range(steps):
            for layer in range(layers):
                pats = plan.patterns_for(layer, step)
                total += self.layer_time(pats)
                dens += 1.0 if pats is None else sum(p.density for p in pats) / len(pats)
        rel = total / (steps * layers)
        return {"relative_time": rel, "speedup": (1.0 / rel) if rel > 0 else None,  # None: nothing left to time
                "density": dens / (steps * layers), "cost_model": self.describe()}

    def describe(self) -> str:
        if self.kind == "flops":
            return f"flops (time = (1 + {self.block_overhead}) x density per sparse head; dense layer = 1)"
        return f"{self.kind} ({self.source})"

    def rows(self, densities=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0)) -> list[dict]:
        """The table at a few densities, for printing."""
        fams = [f for f in FAMILIES if f != "skip"]
        return [{"family": f, **{f"{d:g}": round(self.head_time(f, d), 4) for d in densities}} for f in fams]

    # construction --------------------------------------------------------------------------------
    @classmethod
    def flops(cls, block_overhead: float = 0.1) -> "CostModel":
        return cls("flops", {}, "FLOP estimate", block_overhead)

    @classmethod
    def measured(cls, path: str | os.PathLike | None = None, *, shape: str | None = None, backend: str | None = None,
                 num_tokens: int | None = None) -> "CostModel":
        """From a kernel benchmark result file (default: the package's copy of ``bench/results/kernels-h200.json``).

        ``shape``: which benchmark shape (default: nearest ``num_tokens`` on a log scale, else the
        first); ``backend``: triton if it has rows for that shape, else flex.
        """
        path = Path(path) if path is not None else DEFAULT_KERNEL_TABLE
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise FileNotFoundError(f"kernel timing file {path}: {exc.strerror}") from None
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "shape" in r and "backend" in r for r in rows):
            raise ValueError(f"{path} is not a kernel benchmark result (`sparsevdit bench kernels`): no rows of "
                             "shape / backend timings")
        shapes = {}
        for r in rows:
            shapes.setdefault(r["shape"], _tokens_of(r))
        if not shapes:
            raise ValueError(f"{path} holds no kernel timing rows")
        if shape is None:
            if num_tokens:
                shape = min(shapes, key=lambda s: abs(math.log(max(shapes[s], 1) / num_tokens)))
            else:
                shape = next(iter(shapes))
        if shape not in shapes:
            raise ValueError(f"{path} has no rows for shape {shape!r}; it has {', '.join(shapes)}")
        srows = [r for r in rows if r["shape"] == shape]
        have = {r["backend"] for r in srows}
        backend = backend or ("triton" if "triton" in have else "flex")
        if backend not in have:
            raise ValueError(f"{path} has no {backend!r} rows for shape {shape!r}; backends there: {', '.join(sorted(have))}")
        table = _table_from_rows([r for r in srows if r["backend"] == backend])
        gpu = data.get("gpu", "?") if isinstance(data, dict) else "?"
        return cls("measured", table, f"{path.name}: {backend} on {gpu}, shape {shape}")

    @classmethod
    def from_rows(cls, rows: list[dict], source: str) -> "CostModel":
        """A ``calibrated`` model from benchmark rows of one backend timed on this GPU
        (``bench.kernels.calibrate_cost_model`` times them; the bench imports this module, never the reverse)."""
        return cls("calibrated", _table_from_rows(rows), source)

    @classmethod
    def from_spec(cls, spec: str | None, *, num_tokens: int | None = None) -> "CostModel":
        """``flops`` | ``flops:OVERHEAD`` | ``measured`` | ``measured:PATH`` | a cost JSON written by ``save``."""
        spec = spec or "flops"
        if spec == "flops":
            return cls.flops()
        if spec.startswith("flops:"):
            try:
                overhead = float(spec.split(":", 1)[1])
            except ValueError:
                overhead = math.nan
            if not (math.isfinite(overhead) and overhead >= 0):  # a negative overhead makes sparse free
                raise ValueError(f"cost model {spec!r}: the per-block overhead must be a finite number >= 0")
            return cls.flops(overhead)
        if spec == "measured":
            return cls.measured(num_tokens=num_tokens)
        if spec.startswith("measured:"):
            return cls.measured(spec.split(":", 1)[1], num_tokens=num_tokens)
        path = Path(spec)
        if path.exists():
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("format") == "sparsevdit-cost":
                return cls.from_dict(data)
            return cls.measured(path, num_tokens=num_tokens)
        raise ValueError(f"cost model {spec!r}: expected flops, flops:OVERHEAD, measured, measured:PATH or a cost JSON file")

    # serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "sparsevdit-cost", "kind": self.kind, "source": self.source,
                "block_overhead": self.block_overhead, "table": {k: [list(p) for p in v] for k, v in self.table.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        table = {k: [tuple(p) for p in v] for k, v in data.get("table", {}).items()}
        return cls(data["kind"], table, data.get("source", ""), data.get("block_overhead", 0.1))

    def save(self, path: str | os.PathLike) -> Path:
        from ..atomic_files import write_json

        return write_json(path, self.to_dict())


def _tokens_of(row: dict) -> int:
    s = row.get("shape_str", "")
    try:
        return int(s.split(" ")[0].split("x")[2])
    except (IndexError, ValueError):
        return 0


def _table_from_rows(rows: list[dict]) -> dict:
    table: dict[str, list] = {}
    dense_kernel = None
    for r in rows:
        rel = r["ms"] / r["cudnn_dense_ms"]
        if r["pattern"] == "dense" or r["density"] >= 0.999:
            dense_kernel = rel
            continue
        table.setdefault(r["pattern"], []).append((float(r["density"]), float(rel)))
    if dense_kernel is not None:
        for pts in table.values():
            pts.append((1.0, dense_kernel))
        table["dense"] = [(1.0, dense_kernel)]
    return {k: sorted(v) for k, v in table.items()}


def _interp(points: list, density: float) -> float:
    points = sorted(points)
    d0, t0 = points[0]
    if density <= d0:
        return t0 * density / d0
    for (da, ta), (db, tb) in zip(points, points[1:]):
        if density <= db:
            return ta + (tb - ta) * (density - da) / (db - da) if db > da else tb
    # beyond the last point (only when it is below 1): extend the last segment's rate
    if len(points) >= 2:
        (da, ta), (db, tb) = points[-2], points[-1]
        return tb + (tb - ta) / max(db - da, 1e-9) * (density - db)
    return t0 * density / d0
