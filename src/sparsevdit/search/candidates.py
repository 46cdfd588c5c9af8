"""The candidate patterns a search chooses from, per head.

A ``Candidate`` is a pattern recipe. Most are fixed (the same pattern for every head); stripe
candidates are per head: their key blocks are the ``stripes`` blocks that head attended most in the
profile (column mass of sampled query rows, averaged over steps and calibration samples), counted in
frame-major order (alone, or united with a diagonal band) or in position-major order (united with a
multi-diagonal band, so the union is one position-major pattern).

``default_candidates(layout, block_size)`` is the budget search's set: dense, skip, diagonal and
multi_diagonal at several densities (5-70%), vertical_stripe (first frame as sink, and top-k stripes),
diagonal + top-k stripes and multi_diagonal + top-k position-major stripes, and every registered
method's own ``search_params`` (radial, sliding_tile at a few windows: a method offers itself to the
search there, nothing here names it). Band widths are found by bisection to land near each target
density; recipes whose block masks coincide are kept once. A method candidate is priced by the shape
of its mask (``cost.pattern_family``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import patterns as P
from ..layout import TokenLayout
from ..plan import HeadSpec
from .cost import family_of, pattern_family

BAND_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
STRIPE_DENSITIES = (0.05, 0.1)
UNION_DENSITIES = (0.1, 0.2, 0.3)
UNION_STRIPE_DENSITY = 0.05


@dataclass(frozen=True)
class Candidate:
    label: str
    family: str
    pattern: str | None = None  # registry name (fixed candidates)
    params: dict = field(default_factory=dict)
    stripes: int = 0  # > 0: per-head top-k key blocks from the measured mass
    stripe_ordering: str = "frame_major"
    base: dict | None = None  # {"name", "params"} of the band the stripes are united with
    method: str | None = None  # a registered method (one mask for every layer, head and step), with params

    @property
    def per_head(self) -> bool:
        return self.stripes > 0

    def spec(self, blocks: list[int] | None = None) -> HeadSpec:
        """The plan entry of one head (``blocks``: that head's stripe blocks, for per-head candidates)."""
        if self.method is not None:
            return HeadSpec.of_method(self.method, dict(self.params))
        if not self.per_head:
            return HeadSpec(self.pattern, dict(self.params))
        if blocks is None or len(blocks) == 0:
            raise ValueError(f"candidate {self.label!r} needs the head's stripe blocks")
        stripe = {"blocks": sorted(int(b) for b in blocks)}
        if self.stripe_ordering != "frame_major":
            stripe["ordering"] = self.stripe_ordering
        if self.base is None:
            return HeadSpec("vertical_stripe", stripe)
        return HeadSpec("union", {"patterns": [self.base, {"name": "vertical_stripe", "params": stripe}]})

    def to_dict(self) -> dict:
        return {"label": self.label, "family": self.family, "pattern": self.pattern, "params": self.params,
                "stripes": self.stripes, "stripe_ordering": self.stripe_ordering, "base": self.base,
                "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(d["label"], d["family"], d.get("pattern"), dict(d.get("params") or {}), int(d.get("stripes", 0)),
                   d.get("stripe_ordering", "frame_major"), d.get("base"), d.get("method"))


def fixed(pattern: str, label: str | None = None, **params) -> Candidate:
    return Candidate(label or pattern, family_of(pattern, params), pattern, params)


def method_candidate(method: str, params: dict, layout: TokenLayout, block_size: int, label: str | None = None) -> Candidate:
    """A candidate of a registered method whose mask is the same for every layer, head and step (the
    search picks per head and step itself); its cost family comes from its mask."""
    from ..methods import get_method

    cls = get_method(method)
    if cls.varies:
        raise ValueError(f"method {method!r} builds masks per {', '.join(sorted(cls.varies))}: a search candidate is "
                         "one mask for every layer, head and step")
    c = Candidate(label or f"{method} " + " ".join(f"{k}={v}" for k, v in params.items()), "?", None, dict(params),
                  method=method)
    return Candidate(c.label, pattern_family(build(c, layout, block_size)), None, dict(params), method=method)


def method_candidates(layout: TokenLayout, block_size: int) -> list[Candidate]:
    """Every registered static method's ``search_params`` for this layout, as candidates."""
    from ..methods import get_method, list_methods

    out = []
    for name in list_methods():
        cls = get_method(name)
        if not cls.varies:
            out += [method_candidate(name, params, layout, block_size) for params in cls.search_params(layout, block_size)]
    return out


def band_width(name: str, layout: TokenLayout, block_size: int, target: float) -> int:
    """The width (tokens) of a ``diagonal`` / ``multi_diagonal`` band whose density is nearest ``target``."""
    return P.width_for_density(lambda w: P.build(name, layout, block_size=block_size, width=w).density, target,
                               2 * layout.num_tokens)


def stripe_count(layout: TokenLayout, block_size: int, density: float) -> int:
    nb = P.num_blocks(layout.num_tokens, block_size)
    return max(1, min(nb - 1, round(density * nb)))


def default_candidates(layout: TokenLayout, block_size: int, *, band_densities=BAND_DENSITIES,
                       stripe_densities=STRIPE_DENSITIES, union_densities=UNION_DENSITIES,
                       union_stripe_density=UNION_STRIPE_DENSITY, methods: bool = True) -> list[Candidate]:
    cands = [fixed("dense"), fixed("skip")]
    for name, short in (("diagonal", "diag"), ("multi_diagonal", "multi")):
        for d in band_densities:
            w = band_width(name, layout, block_size, d)
            cands.append(fixed(name, f"{short} w={w}", width=w))
    cands.append(fixed("vertical_stripe", "stripes sink=1", sink_frames=1))
    for d in stripe_densities:
        k = stripe_count(layout, block_size, d)
        cands.append(Candidate(f"stripes top{k}", "vertical_stripe", stripes=k))
    k = stripe_count(layout, block_size, union_stripe_density)
    for d in union_densities:
        w = band_width("diagonal", layout, block_size, d)
        cands.append(Candidate(f"diag w={w}+top{k}", "diag+stripes", stripes=k,
                               base={"name": "diagonal", "params": {"width": w}}))
    for d in union_densities:
        w = band_width("multi_diagonal", layout, block_size, d)
        cands.append(Candidate(f"multi w={w}+top{k}", "multi+stripes", stripes=k, stripe_ordering="position_major",
                               base={"name": "multi_diagonal", "params": {"width": w}}))
    if methods:
        cands += method_candidates(layout, block_size)
    return dedupe(cands, layout, block_size)


def dedupe(cands: list[Candidate], layout: TokenLayout, block_size: int) -> list[Candidate]:
    """Drop fixed candidates whose block mask (and ordering) equals an earlier one's."""
    seen, out = set(), []
    for c in cands:
        if c.per_head:
            key = ("per-head", c.label)
        else:
            p = build(c, layout, block_size)
            key = (p.ordering, p.block_mask.numpy().tobytes())
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def build(c: Candidate, layout: TokenLayout, block_size: int, blocks: list[int] | None = None) -> P.BlockPattern:
    spec = c.spec(blocks)
    if spec.method is not None:
        from ..methods import build_for

        built = build_for(spec.method, layout, block_size, spec.params, layer=0, head=0, step=0)
        return built if built is not None else P.build("dense", layout, block_size=block_size)
    return P.build(spec.pattern, layout, block_size=block_size, **spec.params)


def top_blocks(column_mass: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` key blocks with the most attention mass (``column_mass`` [blocks])."""
    return sorted(int(i) for i in torch.topk(column_mass.float(), min(k, column_mass.numel())).indices)
